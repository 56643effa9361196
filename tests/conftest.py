"""Shared fixtures: the real data (skipped with a reason when absent) and small synthetic datasets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from synthetic import write_synthetic_image

REPO = Path(__file__).resolve().parents[1]


def shared_data_root() -> Path | None:
    """``$PNEUMOSCAN_TEST_DATA`` or ``../shared/data`` (the folder holding ``chest_xray/``), if present."""
    for candidate in (os.environ.get("PNEUMOSCAN_TEST_DATA"), REPO.parent / "shared" / "data"):
        if candidate and (Path(candidate) / "chest_xray" / "train").is_dir():
            return Path(candidate)
    return None


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own cache folder: tests never read or pollute the user's ~/.cache."""
    monkeypatch.setenv("PNEUMOSCAN_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = shared_data_root()
    if root is None:
        pytest.skip("real data absent: ../shared/data/chest_xray not found and $PNEUMOSCAN_TEST_DATA not set")
    return root


@pytest.fixture(scope="session")
def real_subset(shared_data, tmp_path_factory) -> Path:
    """A small real dataset in the Kermany layout: train/{NORMAL,PNEUMONIA} with 24 + 24 images (symlinks)."""
    root = tmp_path_factory.mktemp("real_subset")
    for cls in ("NORMAL", "PNEUMONIA"):
        files = sorted((shared_data / "chest_xray" / "train" / cls).glob("*.jpeg"))[:24]
        (root / "train" / cls).mkdir(parents=True)
        for f in files:
            (root / "train" / cls / f.name).symlink_to(f)
    return root


@pytest.fixture
def synthetic_dataset(tmp_path) -> Path:
    """A Kermany-style folder of synthetic images: 10 patients per class, 2 images each, PNG."""
    root = tmp_path / "synthetic"
    for i in range(10):
        write_synthetic_image(root / "train" / "NORMAL" / f"IM-{i:04d}-0001.png", 0, seed=i)
        write_synthetic_image(root / "train" / "NORMAL" / f"IM-{i:04d}-0002.png", 0, seed=100 + i)
        write_synthetic_image(root / "train" / "PNEUMONIA" / f"person{500 + i}_bacteria_{i}.png", 1, seed=200 + i)
        write_synthetic_image(root / "train" / "PNEUMONIA" / f"person{500 + i}_bacteria_{50 + i}.png", 1, seed=300 + i)
    return root
