"""Synthetic radiographs for tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


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
