"""The default model shipped inside the package, so that ``predict``, ``serve`` and ``load()`` work
right after install, before any training.

The folder holds ``model.onnx`` (served by ONNX Runtime: no torch needed), ``model.safetensors`` (the same
weights for PyTorch and Grad-CAM) and ``model_card.json`` / ``model_card.md``: how the model was trained,
its figures on the official test half with patient-bootstrap intervals, its operating point, intended
use and limits, the SHA-256 of both files and the scores of a few reference images. All of it is
rebuilt by ``bench/build_default_model.py`` from ``../shared/data``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pneumoscan import runs
from pneumoscan.errors import ModelFileError

BUNDLED_DIR = Path(__file__).resolve().parent
# The folder is laid out as a run's export: the same file names.
ONNX_FILE = runs.ONNX
WEIGHTS_FILE = runs.MODEL
META_JSON = runs.MODEL_JSON
CARD_JSON = runs.CARD_JSON
CARD_MARKDOWN = runs.CARD_MARKDOWN
NAME = "default"  # how `pneumoscan models` and the docs refer to it


def bundled_model_dir() -> Path:
    """The folder of the shipped model; raises :class:`ModelFileError` when this installation lacks it."""
    if not (BUNDLED_DIR / ONNX_FILE).is_file():
        raise ModelFileError(f"{BUNDLED_DIR}: this installation has no bundled model ({ONNX_FILE} missing); "
                             "give a model (a run folder or an exported .onnx), or rebuild it with "
                             "bench/build_default_model.py")
    return BUNDLED_DIR


def bundled_onnx() -> Path:
    """The shipped ONNX model (the fast path: ONNX Runtime, no torch)."""
    return bundled_model_dir() / ONNX_FILE


def bundled_card() -> dict[str, Any]:
    """The shipped model card as a dict."""
    path = bundled_model_dir() / CARD_JSON
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"{path}: unreadable model card ({exc})") from None
