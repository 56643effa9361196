"""Where pneumoscan looks for data and keeps its caches when the user does not say."""

from __future__ import annotations

import os
from pathlib import Path

# One default each for the options several commands share (`train`, `data split`, `data cache`): a model
# is trained and cached the same way whichever command prepared its data.
FIT = "stretch"  # the public Kermany copies were stretched to squares; see TrainConfig.fit
VAL_FRACTION = 0.1  # share of each class's patients held out for validation
TEST_FRACTION = 0.1  # share of each class's patients held out as test when the source has no test split
# A source's own validation split is used when it has at least this many images of each class; a smaller
# one (the official Kermany val/, 8 + 8) is pooled into training and validation is carved by patient.
MIN_SOURCE_VAL_PER_CLASS = 50

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
