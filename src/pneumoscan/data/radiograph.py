"""Is a decoded image plausibly a chest radiograph? Refuse blank images and colour pictures.

Decoding (:mod:`pneumoscan.data.image`) accepts any image; scoring a holiday photo or an all-grey
placeholder would still give a confident-looking probability, so prediction and explanation call
:func:`read_radiograph` on every file and report such images on their own row instead.
"""

from __future__ import annotations

import os

import numpy as np

from pneumoscan.data.image import Fit, read_image_and_colour
from pneumoscan.errors import ImageReadError

# Mean channel difference (0-255) above which an image is a colour picture, not a radiograph. Grey
# radiographs saved as RGB (the public Kermany copies) score about 0-2; photographs score 15 or more.
MAX_CHROMA = 12.0
# A radiograph spans far more than this many grey levels; fewer is a blank or placeholder image.
MIN_RANGE = 8


def read_radiograph(source: str | os.PathLike | bytes, size: int | None = None, fit: Fit = "pad", *,
                    name: str | None = None) -> np.ndarray:
    """:func:`~pneumoscan.data.image.read_image`, refusing images that decode but cannot be chest
    radiographs: blank ones and colour pictures. Raises :class:`ImageReadError` naming the file.

    The file is decoded once: the colour test looks at a small sample of the decoded image when it is
    stored in a colour mode (the public radiographs are grey saved as RGB), grey files cost nothing extra.
    """
    label = name or (os.fsdecode(source) if not isinstance(source, bytes | bytearray | memoryview) else "<upload>")
    pixels, colour = read_image_and_colour(source, size, fit, name=name)
    _check(pixels, None if colour is None else _chroma(colour), label)
    return pixels


def check_radiograph_pixels(original: np.ndarray, pixels: np.ndarray, name: str) -> None:
    """The checks of :func:`read_radiograph` for an image given as pixels: ``original`` as the caller gave it (grey,
    RGB or RGBA, any dtype), ``pixels`` the grayscale image made from it."""
    chroma = None
    if original.ndim == 3 and original.shape[-1] in (3, 4):
        rgb = original[..., :3].astype(np.float64)
        scale = 255.0 if np.issubdtype(original.dtype, np.floating) else 255.0 / max(float(rgb.max()), 255.0)
        chroma = _chroma(rgb * scale)
    _check(pixels, chroma, name)


def _check(pixels: np.ndarray, chroma: float | None, label: str) -> None:
    if int(pixels.max()) - int(pixels.min()) < MIN_RANGE:
        raise ImageReadError(f"{label}: blank image (all pixels about {int(pixels.mean())}); not a radiograph")
    if chroma is not None and chroma > MAX_CHROMA:
        raise ImageReadError(f"{label}: a colour picture (mean channel difference {chroma:.0f}/255), not a "
                             "grayscale chest radiograph")


def _chroma(rgb: np.ndarray) -> float:
    """The mean channel difference of RGB pixels (h, w, 3) on the 0-255 scale."""
    rgb = rgb.astype(np.int16) if rgb.dtype == np.uint8 else rgb
    return float(np.mean(np.abs(rgb[..., 0] - rgb[..., 1]) + np.abs(rgb[..., 1] - rgb[..., 2])) / 2)
