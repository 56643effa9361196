"""Shared fixtures: the real data (skipped with a reason when absent) and small synthetic datasets."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

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


def write_synthetic_image(path: Path, label: int, seed: int, size: int = 64, mode: str = "L") -> Path:
    """A fake radiograph: noise, two dark 'lungs', and for pneumonia a bright opacity in one of them."""
    rng = np.random.default_rng(seed)
    img = rng.normal(120, 20, (size, size))
    yy, xx = np.mgrid[:size, :size] / size
    for cx in (0.3, 0.7):
        img -= 60 * np.exp(-(((xx - cx) / 0.12) ** 2 + ((yy - 0.5) / 0.25) ** 2))
    if label == 1:
        cx = 0.3 if rng.random() < 0.5 else 0.7
        img += 90 * np.exp(-(((xx - cx) / 0.08) ** 2 + ((yy - 0.55) / 0.1) ** 2))
    pixels = np.clip(img, 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, "L").convert(mode).save(path)
    return path


@pytest.fixture
def synthetic_dataset(tmp_path) -> Path:
    """A Kermany-style folder of synthetic images: 10 patients per class, 2 images each, PNG."""
    root = tmp_path / "synthetic"
    for i in range(10):
        write_synthetic_image(root / "train" / "NORMAL" / f"IM-{i:04d}-0001.png", 0, seed=i)
        write_synthetic_image(root / "train" / "NORMAL" / f"NORMAL2-IM-{i:04d}-0002.png", 0, seed=100 + i)
        write_synthetic_image(root / "train" / "PNEUMONIA" / f"person{500 + i}_bacteria_{i}.png", 1, seed=200 + i)
        write_synthetic_image(root / "train" / "PNEUMONIA" / f"person{500 + i}_virus_{50 + i}.png", 1, seed=300 + i)
    return root
