"""The models a user can pass to ``predict``, ``serve`` or ``load()``: the bundled default and the run
folders under ``runs/``. Reads only the metadata (``model.json`` or the safetensors header): no torch.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from pneumoscan.errors import ModelFileError
from pneumoscan.models.artifact import MODEL_FILE, ModelMeta, read_meta
from pneumoscan.runs import CALIBRATED, MODEL_JSON, RUNS_DIR


@dataclass(frozen=True)
class ModelEntry:
    """One usable model: where it is and what it is."""

    name: str  # "default" for the bundled model, the run folder's name, or "<run>/<version>" for a calibrated one
    kind: str  # "bundled", "run" or "calibrated" (a site-calibrated version of a run or of the bundled model)
    path: Path
    network: str
    image_size: int
    threshold: float
    created: str
    onnx: bool  # an ONNX export that loading uses (it matches the model: fast start, no torch)
    val_auc: float | None


def list_models(runs: str | os.PathLike = RUNS_DIR) -> list[ModelEntry]:
    """The bundled model (when this installation has it), then the run folders under ``runs``, newest first,
    each followed by its site-calibrated versions (``RUN/calibrated/*/``, newest first; those of the bundled
    model are under ``runs/default/``).

    A folder without a readable model is left out (an interrupted run has no ``model.safetensors`` yet).
    """
    from pneumoscan.bundled import BUNDLED_DIR, NAME, ONNX_FILE

    entries = []
    if (BUNDLED_DIR / ONNX_FILE).is_file():
        entries.append(_entry(NAME, "bundled", BUNDLED_DIR))
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
