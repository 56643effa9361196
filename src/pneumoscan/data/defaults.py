"""Where pneumoscan looks for data and keeps its caches when the user does not say."""

from __future__ import annotations

import os
from pathlib import Path

SHARED_DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "chest_xray"


def cache_root() -> Path:
    """``$PNEUMOSCAN_CACHE``, else ``$XDG_CACHE_HOME/pneumoscan``, else ``~/.cache/pneumoscan``."""
    if env := os.environ.get("PNEUMOSCAN_CACHE"):
        return Path(env).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "pneumoscan"


def default_data_root() -> Path:
    """``$PNEUMOSCAN_DATA``, else ``../shared/data/chest_xray`` beside the checkout, else the download cache."""
    if env := os.environ.get("PNEUMOSCAN_DATA"):
        return Path(env).expanduser()
    for candidate in (Path.cwd().parent / "shared" / "data" / "chest_xray", SHARED_DATA):
        if candidate.is_dir():
            return candidate
    return cache_root() / "datasets" / "ChestXRay2017"
