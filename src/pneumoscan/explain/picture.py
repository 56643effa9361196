"""A heatmap as a picture: blended over the radiograph, at the image's own aspect, saying so when it is flat.

``pneumoscan explain``, the server's ``?explain=true`` and the DICOM node's overlay all draw with
:func:`explanation_picture`, so a flat map reads the same everywhere: the plain radiograph with
:data:`FLAT_NOTICE` written on it, never a picture that only looks like "no evidence".
"""

from __future__ import annotations

import numpy as np

from pneumoscan.explain.gradcam import is_flat

FLAT_NOTICE = "flat map: no evidence for PNEUMONIA located"
# Pictures are drawn at least this large (longest side, px), so that the notice's text can be read.
MIN_SIDE = 256


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45, cmap: str = "jet") -> np.ndarray:
    """Blend a heatmap (values in [0, 1]) over a grayscale uint8 image: RGB uint8 of the image's size.

    The colour's weight grows with the heatmap, so regions without evidence show the plain radiograph.
    """
    from matplotlib import colormaps
    from PIL import Image

    gray = np.asarray(image, dtype=np.float32)
    if heatmap.shape != gray.shape:
        resized = Image.fromarray(np.asarray(heatmap, np.float32), mode="F").resize(
            (gray.shape[1], gray.shape[0]), Image.Resampling.BILINEAR)
        heatmap = np.asarray(resized)
    heat = np.clip(np.nan_to_num(heatmap), 0.0, 1.0)
    colour = colormaps[cmap](heat)[..., :3] * 255.0
    weight = (alpha * heat)[..., None]
    blended = gray[..., None] * (1.0 - weight) + colour * weight
    return np.clip(blended + 0.5, 0, 255).astype(np.uint8)


def explanation_picture(image: np.ndarray, heatmap: np.ndarray, *, alpha: float = 0.45,
                        source: tuple[int, int, str] | None = None, longest: int | None = None) -> np.ndarray:
    """The heatmap over the model input ``image`` (uint8 S x S), RGB uint8, with :data:`FLAT_NOTICE`
    written on it when the map is flat (:func:`~pneumoscan.explain.is_flat`).

    ``source`` = (width, height, fit) of the image the input was made from: the picture is then drawn at
    that image's aspect (the padding of ``pad`` removed, ``stretch`` undone; ``crop`` keeps the square the
    model saw). Its longest side is ``longest`` px (default: the input's size, at least :data:`MIN_SIDE`).
    """
    rgb = overlay(image, heatmap, alpha)
    rgb = _at_aspect(rgb, *(source or (rgb.shape[1], rgb.shape[0], "stretch")), longest or max(MIN_SIDE, rgb.shape[0]))
    return _with_notice(rgb, FLAT_NOTICE) if is_flat(heatmap) else rgb


def _at_aspect(rgb: np.ndarray, width: int, height: int, fit: str, longest: int) -> np.ndarray:
    from PIL import Image

    from pneumoscan.data.image import fit_geometry

    size = rgb.shape[0]
    new_w, new_h, left, top = fit_geometry(max(1, int(width)), max(1, int(height)), size, fit)  # type: ignore[arg-type]
    picture = Image.fromarray(rgb, "RGB")
    if fit == "pad":  # the black bars are the decoder's, not the image's
        picture = picture.crop((left, top, left + new_w, top + new_h))
    elif fit == "stretch":
        new_w, new_h = int(width), int(height)
    else:  # crop: the model saw the central square only, and that is what the map covers
        new_w = new_h = size
    scale = longest / max(new_w, new_h)
    shape = (max(1, round(new_w * scale)), max(1, round(new_h * scale)))
    if shape == picture.size:
        return np.asarray(picture, dtype=np.uint8)
    return np.asarray(picture.resize(shape, Image.Resampling.BILINEAR), dtype=np.uint8)


def _with_notice(rgb: np.ndarray, text: str) -> np.ndarray:
    """``text`` on a dark band across the top of ``rgb``, its font sized to fit the width."""
    from PIL import Image, ImageDraw, ImageFont

    picture = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), "RGB")
    draw = ImageDraw.Draw(picture)
    width = picture.width
    lines = [text] if width >= 400 else text.split(": ", 1)  # narrow pictures: two short lines
    height = max(8, min(24, int(width * 1.6 / max(len(line) for line in lines))))
    font = ImageFont.load_default(size=height)
    band = len(lines) * (height + 2) + 4
    draw.rectangle((0, 0, width, band), fill=(0, 0, 0))
    for i, line in enumerate(lines):
        draw.text((3, 2 + i * (height + 2)), line, fill=(255, 255, 0), font=font)
    return np.asarray(picture, dtype=np.uint8)
