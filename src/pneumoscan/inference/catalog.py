"""The models a user can pass to ``predict``, ``serve`` or ``load()``: the bundled ones (``default``,
``fast``) and the run folders under ``runs/``. Reads only the metadata (``model.json`` or the safetensors
header) and the bundled models' cards: no torch.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pneumoscan.errors import ModelFileError
from pneumoscan.models.artifact import MODEL_FILE, ModelMeta, read_meta
from pneumoscan.runs import CALIBRATED, MODEL_JSON, RUNS_DIR


@dataclass(frozen=True)
class ModelEntry:
    """One usable model: where it is and what it is."""

    name: str  # "default" or "fast" for a bundled model, the run folder's name, or "<run>/<version>" for a calibrated one
    kind: str  # "bundled", "run" or "calibrated" (a site-calibrated version of a run or of the bundled model)
    path: Path
    network: str
    image_size: int
    threshold: float
    created: str
    onnx: bool  # an ONNX export that loading uses (it matches the model: fast start, no torch)
    val_auc: float | None


def list_models(runs: str | os.PathLike = RUNS_DIR) -> list[ModelEntry]:
    """The bundled models this installation has, then the run folders under ``runs``, newest first, each
    followed by its site-calibrated versions (``RUN/calibrated/*/``, newest first; those of a bundled model
    are under ``runs/<name>/``).

    A folder without a readable model is left out (an interrupted run has no ``model.safetensors`` yet).
    """
    from pneumoscan.bundled import MODELS, installed

    entries = [_entry(name, "bundled", folder) for name, folder in MODELS.items() if installed(name)]
    root = Path(runs).expanduser()
    folders = [p for p in root.iterdir() if p.is_dir() and not p.is_symlink()] if root.is_dir() else []
    for folder in sorted(folders, key=lambda p: p.name, reverse=True):
        versions = sorted((folder / CALIBRATED).glob(f"*/{MODEL_FILE}"), key=lambda p: p.parent.name, reverse=True)
        for kind, name, where in [("run", folder.name, folder),
                                  *(("calibrated", f"{folder.name}/{v.parent.name}", v.parent) for v in versions)]:
            if (where / MODEL_FILE).is_file():
                try:
                    entries.append(_entry(name, kind, where))
                except ModelFileError:
                    continue
    return entries


def _entry(name: str, kind: str, folder: Path) -> ModelEntry:
    meta = _meta(folder)
    metrics = meta.val_metrics if isinstance(meta.val_metrics, dict) else {}
    auc = metrics.get("auc", metrics.get("roc_auc"))
    # Whether `predict` would use its ONNX model, by the loader's own rule (a stale export is not used).
    from pneumoscan.inference.model_files import folder_export

    return ModelEntry(name, kind, folder, meta.name, int(meta.image_size), float(meta.threshold), meta.created,
                      folder_export(folder)[0] is not None, float(auc) if isinstance(auc, int | float) else None)


def _meta(folder: Path) -> ModelMeta:
    # model.json is the cheap path; the weights' own header is the authority when it is absent or torn.
    try:
        return ModelMeta.from_dict(json.loads((folder / MODEL_JSON).read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return read_meta(folder)


@dataclass(frozen=True)
class BundledChoice:
    """A bundled model as a user choosing between them sees it: its card's new-site figures and speed."""

    name: str
    purpose: str
    installed: bool
    why_not: str | None = None  # what to do when it is not installed (the loader's own message)
    network: str | None = None
    image_size: int | None = None
    images: int | None = None  # images of the official test half the figures were measured on
    roc_auc: tuple[float, float, float] | None = None  # value, low, high (95 % patient bootstrap)
    sensitivity: tuple[float, float, float] | None = None  # at the stored threshold, with its interval
    specificity: tuple[float, float, float] | None = None
    images_per_second: float | None = None  # ONNX Runtime, as the card's speed section says
    speed_how: str | None = None  # the conditions and the command that measured it
    provisional: bool = False  # a short build (the card's recipe says PROVISIONAL)


def bundled_choices() -> list[BundledChoice]:
    """Every bundled model of :data:`pneumoscan.bundled.MODELS`, installed or not, with the figures its
    card holds: ROC-AUC with its interval, sensitivity and specificity at the stored threshold on the
    official test half (a new site: never trained on), and the images per second its build measured."""
    from pneumoscan.bundled import MODELS, PURPOSES
    from pneumoscan.inference.model_files import resolve_model

    choices = []
    for name in MODELS:
        try:
            card = resolve_model(name).read_card() or {}
        except ModelFileError as exc:
            choices.append(BundledChoice(name, PURPOSES.get(name, ""), False, why_not=str(exc)))
            continue
        choices.append(_choice(name, PURPOSES.get(name, ""), card))
    return choices


def _choice(name: str, purpose: str, card: dict[str, Any]) -> BundledChoice:
    evaluation = (card.get("metrics") or {}).get("evaluation") or {}
    figures = evaluation.get("figures") or {}
    speed = card.get("speed") or {}
    model, contract = card.get("model") or {}, card.get("input") or {}

    def figure(key: str) -> tuple[float, float, float] | None:
        found = figures.get(key)
        return (float(found["value"]), float(found["low"]), float(found["high"])) if found else None

    rate = speed.get("images_per_second")
    how = (f"{speed.get('conditions', '')}; measured by `{speed['command']}`" if speed.get("command") else None)
    return BundledChoice(name, purpose, True, network=model.get("name"), image_size=contract.get("size"),
                         images=evaluation.get("images"), roc_auc=figure("roc_auc"),
                         sensitivity=figure("sensitivity at the threshold"),
                         specificity=figure("specificity at the threshold"),
                         images_per_second=float(rate) if rate is not None else None, speed_how=how,
                         provisional="PROVISIONAL" in str((card.get("build") or {}).get("recipe", "")))
