"""The default model shipped inside the package, so that ``predict``, ``serve`` and ``load()`` work
right after install, before any training.

The folder holds ``model.onnx`` (served by ONNX Runtime: no torch needed), ``model.safetensors`` (the same
weights for PyTorch and Grad-CAM) and ``model_card.json`` / ``model_card.md``: how the model was trained,
its figures on the official test half with patient-bootstrap intervals, its operating point, intended
use and limits, the SHA-256 of both files and the scores of a few reference images. All of it is
rebuilt by ``bench/build_default_model.py`` from ``../shared/data``. Which of its files a command uses is
decided by :mod:`pneumoscan.inference.model_files` (MODEL None: this model).
"""

from __future__ import annotations

from pathlib import Path

from pneumoscan import runs

BUNDLED_DIR = Path(__file__).resolve().parent
# The folder is laid out as a run's export: the same file names.
ONNX_FILE = runs.ONNX
WEIGHTS_FILE = runs.MODEL
META_JSON = runs.MODEL_JSON
CARD_JSON = runs.CARD_JSON
CARD_MARKDOWN = runs.CARD_MARKDOWN
NAME = "default"  # how `pneumoscan models` and the docs refer to it
