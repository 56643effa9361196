"""Can these pixels hold a radiograph at all? The one place of the pixel rules, with one outcome everywhere.

Decoding (:mod:`pneumoscan.data.image`) accepts any image; scoring a holiday photo, an all-grey placeholder,
a drawing or a dot on black would still give a confident-looking probability, so prediction, explanation,
the server and the DICOM node call :func:`read_radiograph` (or :func:`check_radiograph_pixels` for pixels
given as an array) on every image and report such images on their own row instead: blank, a colour
picture, a handful of grey levels, near-flat. These are pixels that hold no radiograph, not a judgement
of scope: ``--no-scope-check`` does not score them (the scope gate, :mod:`pneumoscan.inference.scope`,
judges the pixels that pass).
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
# A decoded model input with fewer grey levels than this is a drawing or a dot on black, not a radiograph
# (training radiographs: 138 or more at 128 px).
MIN_GREY_LEVELS = 32
# Near-flat: this share of pixels within FLAT_LEVELS of the median (training radiographs: at most 0.58, with padding).
MAX_FLAT_SHARE = 0.9
FLAT_LEVELS = 4


def read_radiograph(source: str | os.PathLike | bytes, size: int | None = None, fit: Fit = "pad", *,
                    name: str | None = None) -> np.ndarray:
    """:func:`~pneumoscan.data.image.read_image`, refusing images that decode but cannot be chest
    radiographs (:func:`pixel_problem`). Raises :class:`ImageReadError` naming the file.

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
    problem = pixel_problem(pixels, chroma)
    if problem is not None:
        raise ImageReadError(f"{label}: {problem}")


def pixel_problem(pixels: np.ndarray, chroma: float | None = None) -> str | None:
    """Why the decoded image ``pixels`` (uint8 (H, W), the model's input) cannot be a radiograph, or None:
    blank, a colour picture (``chroma``: its mean channel difference, None for a grey file), a handful of
    grey levels (a drawing, a mask, a dot on black), or near-flat."""
    values = np.asarray(pixels)
    low, high = int(values.min()), int(values.max())
    if high - low < MIN_RANGE:
        return f"blank image (all pixels about {int(values.mean())}); not a radiograph"
    if chroma is not None and chroma > MAX_CHROMA:
        return f"a colour picture (mean channel difference {chroma:.0f}/255), not a grayscale chest radiograph"
    counts = np.bincount(values.ravel(), minlength=256)
    levels = int(np.count_nonzero(counts))
    if levels < MIN_GREY_LEVELS:
        return (f"only {levels} grey levels (a radiograph has over {MIN_GREY_LEVELS * 4}); a drawing, a mask or a "
                "dot on black, not a radiograph")
    # The median and the share near it from the histogram: the same figures as np.median, without a sort.
    below = np.cumsum(counts)
    middle = np.searchsorted(below, [(values.size - 1) // 2, values.size // 2], side="right")
    median = int(middle.sum()) // 2
    flat = float(counts[max(0, median - FLAT_LEVELS): median + FLAT_LEVELS + 1].sum() / values.size)
    if flat > MAX_FLAT_SHARE:
        return f"near-flat: {flat:.0%} of the pixels within {FLAT_LEVELS} grey levels of one value; not a radiograph"
    return None


def _chroma(rgb: np.ndarray) -> float:
    """The mean channel difference of RGB pixels (h, w, 3) on the 0-255 scale."""
    rgb = rgb.astype(np.int16) if rgb.dtype == np.uint8 else rgb
    return float(np.mean(np.abs(rgb[..., 0] - rgb[..., 1]) + np.abs(rgb[..., 1] - rgb[..., 2])) / 2)
