"""Decide which file the server loads for a MODEL argument, load it, and find its model card.

The server prefers ONNX Runtime (fast start, no torch, Lightning or MONAI on the request path):

- ``model.onnx`` (any ``.onnx`` file): served with ONNX Runtime.
- a run folder: ``RUN/export/model.onnx`` when it exists, else ``RUN/model.safetensors`` with PyTorch
  (a warning says to run ``pneumoscan export RUN``). The server never exports by itself: exporting
  writes into the user's run folder and can take a while, which a server start should not do silently.
- a ``.safetensors`` / ``.ckpt`` file: served with PyTorch, as asked.

Grad-CAM needs the PyTorch weights; for an ONNX model they are looked up beside it
(``model.safetensors`` in the same folder, or in the run folder that holds ``export/``).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pneumoscan.errors import ModelFileError
from pneumoscan.inference import Classifier
from pneumoscan.provenance import DISCLAIMER
from pneumoscan.runs import (
    MODEL_JSON,
    ONNX,
    card_beside,
    export_file,
    find_model_file,
    run_folder_of,
    weights_beside,
)

log = logging.getLogger("pneumoscan.serving")


@dataclass(frozen=True)
class ModelSource:
    """The files behind one MODEL argument: what to load, with which backend, and where the extras are."""

    path: Path  # the file loaded for predictions
    backend: str  # "onnxruntime" or "torch"
    weights: Path | None = None  # PyTorch weights for Grad-CAM, when found
    card: Path | None = None  # model_card.json written by `pneumoscan export`, when found
    run_folder: Path | None = None  # for a card built on the fly (it reads the run's evaluation reports)
    loaded: Classifier | None = None  # the classifier, when checking the export already loaded it


@dataclass
class ServedModel:
    """A loaded classifier with what the API reports about it."""

    classifier: Classifier
    backend: str
    card: dict[str, Any] = field(default_factory=dict)
    weights: Path | None = None  # PyTorch weights for Grad-CAM (None: use the torch backend's own model)

    @property
    def explain_available(self) -> bool:
        return self.weights is not None or self.backend == "torch"


def resolve_model(path: str | os.PathLike, threads: int | None = None) -> ModelSource:
    """Pick the file to serve for ``path`` (see the module docstring); raises :class:`ModelFileError`."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelFileError(f"{path}: no such model file or run folder; give a run folder or an exported model.onnx")
    if path.is_dir():
        from pneumoscan.inference.onnx_backend import matching_export

        exported = export_file(path)
        # The same rule as `predict`: an export made before the run was retrained or resumed is stale.
        if exported.is_file() and (classifier := matching_export(path, threads)) is not None:
            return ModelSource(exported, "onnxruntime", weights_beside(exported), card_beside(exported), path,
                               loaded=classifier)
        if not exported.is_file() and (path / ONNX).is_file():
            onnx = path / ONNX
            return ModelSource(onnx, "onnxruntime", weights_beside(onnx), card_beside(onnx), path)
        weights = find_model_file(path)  # raises a clear ModelFileError when there is none
        reason = _export_problem(exported, threads) if exported.is_file() else "is missing"
        log.warning("%s: export/%s %s: serving with PyTorch (slower start); run `pneumoscan export %s` "
                    "to serve with ONNX Runtime", path, ONNX, reason, path)
        # No card: the export's one describes another model; complete_card builds this model's.
        return ModelSource(weights, "torch", weights, None, path)
    if path.suffix.lower() == ".onnx":
        return ModelSource(path, "onnxruntime", weights_beside(path), card_beside(path), run_folder_of(path))
    return ModelSource(path, "torch", path, None, run_folder_of(path))


def _export_problem(exported: Path, threads: int | None) -> str:
    """Why a run's export is not served: it cannot be read at all, or it is another model's."""
    from pneumoscan.inference.onnx_backend import load_onnx

    try:
        load_onnx(exported, device="cpu", threads=threads)
    except ModelFileError as exc:
        return f"is unreadable ({exc})"
    return f"is stale (it does not match {MODEL_JSON})"


def load_served_model(path: str | os.PathLike, threads: int | None = None) -> ServedModel:
    """Resolve ``path``, load the classifier and its card; raises the project's errors on a bad model.

    ``threads``: ONNX Runtime's threads per inference (None: its default, one per core).
    """
    source = resolve_model(path, threads)
    if source.loaded is not None:
        classifier = source.loaded
    elif source.backend == "onnxruntime":
        from pneumoscan.inference.onnx_backend import load_onnx

        classifier = load_onnx(source.path, threads=threads)
    else:
        import pneumoscan

        classifier = pneumoscan.load(source.path)
    card = _read_card(source.card) if source.card else None
    served = ServedModel(classifier, source.backend, weights=source.weights)
    served.card = complete_card(card, served, source.path.name, source.run_folder)
    log.info("serving %s with %s (Grad-CAM %s)", source.path, source.backend,
             "available" if served.explain_available else "unavailable: no PyTorch weights beside it")
    return served


def served_from_classifier(classifier: Classifier) -> ServedModel:
    """Wrap an already loaded :class:`Classifier` (for tests and notebooks)."""
    backend = classifier.backend.name
    served = ServedModel(classifier, backend)
    served.card = complete_card(None, served, None)
    return served


def complete_card(card: dict[str, Any] | None, served: ServedModel, file_name: str | None,
                  run_folder: Path | None = None) -> dict[str, Any]:
    """The model card for ``GET /v1/model``: the one ``pneumoscan export`` wrote when there is one, else one
    built the same way from the model's metadata; always with the disclaimer and a ``serving`` section
    (what is served and how, which the page reads)."""
    from pneumoscan.serving.model_card import build_model_card

    meta = served.classifier.meta
    card = dict(card) if card is not None else build_model_card(meta, run_folder)
    card.setdefault("disclaimer", DISCLAIMER)
    card["serving"] = {
        "model": meta.name,
        "version": meta.version,
        "file": file_name,  # the name only: the server's folders are nobody's business
        "backend": served.backend,
        "threshold": float(meta.threshold),
        "explain": served.explain_available,
    }
    return card


def _read_card(path: Path) -> dict[str, Any] | None:
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("%s: unreadable model card (%s); serving a card built from the model's metadata", path, exc)
        return None
    return card if isinstance(card, dict) else None
