"""``load(path)``: the :class:`Classifier` for a run folder, a model file or an ONNX export."""

from __future__ import annotations

import os
from pathlib import Path

from pneumoscan.inference.classifier import Classifier
from pneumoscan.inference.onnx_backend import load_onnx, matching_export


def load(path: str | os.PathLike | None = None, device: str | None = None, *, prefer_onnx: bool = False,
         scope_check: bool = True) -> Classifier:
    """Load a run folder, a ``.safetensors``/``.ckpt`` model, or an exported ``.onnx`` model.

    With no ``path``, the model bundled with the package (:mod:`pneumoscan.bundled`): its ONNX file on
    the CPU (no torch import), its PyTorch weights for another device.

    With ``prefer_onnx``, a run folder whose ``export/model.onnx`` holds the same metadata as its
    ``model.json`` is served by ONNX Runtime (no torch import: a fast start); otherwise by PyTorch.
    ``scope_check=False`` scores images the scope gate would refuse (they are marked; see
    :class:`Classifier`). Raises :class:`~pneumoscan.errors.ModelFileError` for anything that is not one
    of our models; no file is ever unpickled.
    """
    classifier = _load(path, device, prefer_onnx)
    classifier.scope_check = scope_check
    return classifier


def _load(path: str | os.PathLike | None, device: str | None, prefer_onnx: bool) -> Classifier:
    if path is None:
        from pneumoscan.bundled import ONNX_FILE, WEIGHTS_FILE, bundled_model_dir

        folder = bundled_model_dir()
        path = folder / (ONNX_FILE if device in (None, "cpu") else WEIGHTS_FILE)
    path = Path(path).expanduser()
    if path.suffix.lower() == ".onnx":
        return load_onnx(path, device=device)
    if prefer_onnx and device in (None, "cpu") and (exported := matching_export(path)) is not None:
        return exported
    from pneumoscan.inference.torch_backend import TorchBackend
    from pneumoscan.models.artifact import load_model  # imports torch: only on this path

    model, meta = load_model(path)
    return Classifier(TorchBackend(model, device), meta)
