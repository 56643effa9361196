"""The models shipped inside the package, so that ``predict``, ``serve`` and ``load()`` work right after
install, before any training: ``default`` (the accurate one, used when no model is given) and ``fast`` (a
small student distilled from ``default``: many times the images per second, less specific at a new site).

Each model's folder holds ``model.onnx`` (served by ONNX Runtime: no torch needed), ``model.safetensors``
(the same weights for PyTorch and Grad-CAM), ``model.json`` (its metadata, readable without torch) and
``model_card.json`` / ``model_card.md``: how the model was trained, its figures on the official test half
with patient-bootstrap intervals, its measured speed, its operating point, intended use and limits, the
SHA-256 of both files and the scores of a few reference images. ``default``'s files sit in this folder,
``fast``'s in ``fast/``. All of it is rebuilt by ``bench/build_default_model.py`` (``--which fast``) from
``../shared/data``. Which of a model's files a command uses is decided by
:mod:`pneumoscan.inference.model_files`.
"""

from __future__ import annotations

import os
from pathlib import Path

from pneumoscan import runs

BUNDLED_DIR = Path(__file__).resolve().parent  # the default model's folder
# Each folder is laid out as a run's export: the same file names.
ONNX_FILE = runs.ONNX
WEIGHTS_FILE = runs.MODEL
META_JSON = runs.MODEL_JSON
CARD_JSON = runs.CARD_JSON
CARD_MARKDOWN = runs.CARD_MARKDOWN
NAME = "default"  # the model used when none is given
FAST = "fast"
# The one table of bundled names: every command, `pneumoscan.load`, `pneumoscan models` and the build read it.
MODELS: dict[str, Path] = {NAME: BUNDLED_DIR, FAST: BUNDLED_DIR / FAST}
# What each is for, in a few words (`pneumoscan models`, the error for a model this installation lacks).
PURPOSES: dict[str, str] = {
    NAME: "the accurate model (used when no model is given)",
    FAST: f"a small student distilled from {NAME}: many times faster, less specific at a new site",
}


def folder(name: str) -> Path:
    """The folder of the bundled model ``name`` (a key of :data:`MODELS`), whether or not it is installed."""
    return MODELS[name]


def installed(name: str) -> bool:
    """Whether this installation holds the bundled model ``name`` (its ``model.onnx``)."""
    return (MODELS[name] / ONNX_FILE).is_file()


def name_of(path: str | os.PathLike) -> str | None:
    """The bundled model whose folder holds the file ``path``, or None for any other file."""
    parent = Path(path).resolve().parent
    return next((name for name, where in MODELS.items() if where == parent), None)
