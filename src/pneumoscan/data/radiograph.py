"""Is a decoded image plausibly a chest radiograph? Refuse blank images and colour pictures.

Decoding (:mod:`pneumoscan.data.image`) accepts any image; scoring a holiday photo or an all-grey
placeholder would still give a confident-looking probability, so prediction and explanation call
:func:`check_radiograph` on every file and report such images on their own row instead.
"""

from __future__ import annotations

import io
import os

import numpy as np

from pneumoscan.data.image import PIL_FORMATS, is_dicom
from pneumoscan.errors import ImageReadError

# Mean channel difference (0-255) above which an image is a colour picture, not a radiograph. Grey
# radiographs saved as RGB (the public Kermany copies) score about 0-2; photographs score 15 or more.
MAX_CHROMA = 12.0
# A radiograph spans far more than this many grey levels; fewer is a blank or placeholder image.
MIN_RANGE = 8


def check_radiograph(source: str | os.PathLike | bytes, pixels: np.ndarray, name: str | None = None) -> None:
    """Refuse images that decode but cannot be chest radiographs: blank ones and colour pictures.

    ``pixels`` is the decoded grayscale image; the colour test re-reads only the header and a tiny
    draft of images stored in colour modes, so grey files cost nothing extra.
    """
    label = name or (os.fsdecode(source) if not isinstance(source, bytes | bytearray | memoryview) else "<upload>")
    if int(pixels.max()) - int(pixels.min()) < MIN_RANGE:
        raise ImageReadError(f"{label}: blank image (all pixels about {int(pixels.mean())}); not a radiograph")
    chroma = _chroma(source)
    if chroma is not None and chroma > MAX_CHROMA:
        raise ImageReadError(
            f"{label}: a colour picture (mean channel difference {chroma:.0f}/255), not a grayscale "
            "chest radiograph"
        )


def check_radiograph_pixels(original: np.ndarray, pixels: np.ndarray, name: str) -> None:
    """:func:`check_radiograph` for an image given as pixels: ``original`` as the caller gave it (grey,
    RGB or RGBA, any dtype), ``pixels`` the grayscale image made from it."""
    if int(pixels.max()) - int(pixels.min()) < MIN_RANGE:
        raise ImageReadError(f"{name}: blank image (all pixels about {int(pixels.mean())}); not a radiograph")
    if original.ndim == 3 and original.shape[-1] in (3, 4):
        rgb = original[..., :3].astype(np.float64)
        scale = 255.0 if np.issubdtype(original.dtype, np.floating) else 255.0 / max(float(rgb.max()), 255.0)
        rgb = rgb * scale
        chroma = float(np.mean(np.abs(rgb[..., 0] - rgb[..., 1]) + np.abs(rgb[..., 1] - rgb[..., 2])) / 2)
        if chroma > MAX_CHROMA:
            raise ImageReadError(f"{name}: a colour picture (mean channel difference {chroma:.0f}/255), not a "
                                 "grayscale chest radiograph")


def _chroma(source: str | os.PathLike | bytes) -> float | None:
    from PIL import Image

    stream = io.BytesIO(bytes(source)) if isinstance(source, bytes | bytearray | memoryview) else None
    try:
        with stream or open(source, "rb") as fh:  # type: ignore[arg-type]
            if is_dicom(fh.read(132)):
                return None  # DICOM radiographs are grey; RGB DICOMs are already converted by read_image
            fh.seek(0)
            with Image.open(fh, formats=PIL_FORMATS) as image:
                if image.mode not in ("RGB", "RGBA", "P", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
                    return None
                image.draft("RGB", (64, 64))  # JPEG: decode at 1/8 scale, enough to tell colour
                small = image.convert("RGB")
                small.thumbnail((64, 64))
                rgb = np.asarray(small, dtype=np.int16)
    except Exception:  # noqa: BLE001 - read_image decoded this file: a hiccup here must not refuse it
        return None
    return float(np.mean(np.abs(rgb[..., 0] - rgb[..., 1]) + np.abs(rgb[..., 1] - rgb[..., 2])) / 2)
