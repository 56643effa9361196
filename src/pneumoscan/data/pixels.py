"""What every decoder shares: the limits on what it accepts and the scaling of any bit depth to 8 bits."""

from __future__ import annotations

import os

import numpy as np

from pneumoscan.errors import ImageReadError

# Real radiographs are at most ~4,300 px a side (18 Mpx); anything far beyond is a decompression bomb.
MAX_PIXELS = int(os.environ.get("PNEUMOSCAN_MAX_PIXELS", 64_000_000))
# A chest DICOM is tens of MB; a file far larger is refused before it is read into memory.
MAX_FILE_BYTES = int(os.environ.get("PNEUMOSCAN_MAX_FILE_BYTES", 512 * 1024 * 1024))


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Scale any-depth pixel values to 0..255 by their own range (12/16-bit and float images).

    Works in one float32 copy, scaled in place: at the pixel limit every extra temporary is 256 MB."""
    if pixels.dtype == np.uint8:
        return pixels
    values = pixels.astype(np.float32)
    if np.issubdtype(pixels.dtype, np.integer):
        low, high = float(values.min()), float(values.max())
    else:
        finite = np.isfinite(values)
        if not finite.any():
            return np.zeros(values.shape, np.uint8)
        low, high = float(np.min(values, where=finite, initial=np.inf)), float(np.max(values, where=finite, initial=-np.inf))
        values[~finite] = low
        del finite
    if high <= low:
        return np.zeros(values.shape, np.uint8)
    return scaled_to_uint8(values, low, 255.0 / (high - low))


def scaled_to_uint8(values: np.ndarray, low: float, scale: float) -> np.ndarray:
    """``clip((values - low) * scale + 0.5, 0, 255)`` as uint8, computed in ``values`` itself."""
    values -= low
    values *= scale
    values += 0.5
    np.clip(values, 0, 255, out=values)
    return values.astype(np.uint8)


def check_pixels(width: int, height: int, label: str) -> None:
    if width <= 0 or height <= 0:
        raise ImageReadError(f"{label}: image has no pixels ({width}x{height})")
    if width * height > MAX_PIXELS:
        raise ImageReadError(
            f"{label}: refused as a decompression bomb: {width}x{height} = {width * height:,} pixels is over "
            f"the limit of {MAX_PIXELS:,} (set PNEUMOSCAN_MAX_PIXELS to raise it)"
        )
