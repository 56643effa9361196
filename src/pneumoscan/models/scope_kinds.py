"""What users send by mistake instead of one frontal chest radiograph, made from radiographs.

The scope gate's kind probe (:mod:`pneumoscan.models.scope_gate`) learns these kinds from training radiographs
turned into them, and ``bench/bench_scope.py`` measures it on kinds made from test radiographs: a
screenshot of a viewer (the radiograph in a dark frame with toolbars, side panels, thumbnails and
overlay text), several radiographs in one image (2 side by side, 2 x 2, 3 x 3), one lung (the left or
right quarter to half), a small radiograph (20-40 % of the side) on a black, white or grey canvas, and a page of
text. :func:`compose` makes one image at any resolution (the bench writes them as files);
:func:`synthesise` makes many at the model's input size, through the model's fit, as decoding would.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from pneumoscan.data.image import Fit, resize
from pneumoscan.models.scope_meta import KINDS

MADE = KINDS[1:]  # what compose() makes
# How many radiographs each kind is made of (the first is the one shown large).
TILES = {KINDS[1]: 4, KINDS[2]: 9, KINDS[3]: 1, KINDS[4]: 1, KINDS[5]: 0}
_WORDS = ("W 2048", "L 1024", "PA", "AP", "ERECT", "R", "L", "1:1", "100%", "Study", "Series 1", "Img 1/2",
          "CHEST", "2024-03-11", "ID 0042", "kVp 120", "mAs 2.5", "Zoom", "WL", "Ann", "Report")


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=max(6, size))


def _place(canvas: Image.Image, tile: np.ndarray, box: tuple[int, int, int, int], keep_aspect: bool = True) -> None:
    """Paste ``tile`` into ``box`` (left, top, width, height) of ``canvas``, scaled to fit it."""
    left, top, width, height = box
    image = Image.fromarray(tile)
    if keep_aspect:
        scale = min(width / image.width, height / image.height)
        new = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        left, top = left + (width - new[0]) // 2, top + (height - new[1]) // 2
    else:
        new = (max(1, width), max(1, height))
    canvas.paste(image.resize(new, Image.Resampling.BILINEAR), (left, top))


def _text(draw: ImageDraw.ImageDraw, xy: tuple[int, int], rng: np.random.Generator, size: int, fill: int) -> None:
    words = " ".join(rng.choice(_WORDS, int(rng.integers(1, 4))))
    draw.text(xy, words, fill=fill, font=_font(size))


def screenshot(tiles: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """A viewer's window: toolbar, side panels with thumbnails or text, the radiograph with overlays."""
    side = max(tiles[0].shape)
    width, height = int(side * rng.uniform(1.3, 1.9)), int(side * rng.uniform(0.95, 1.25))
    canvas = Image.new("L", (width, height), int(rng.integers(5, 50)))
    draw = ImageDraw.Draw(canvas)
    bar = int(height * rng.uniform(0.05, 0.12))
    draw.rectangle((0, 0, width, bar), fill=int(rng.integers(40, 110)))
    for x in range(int(bar * 0.3), int(width * rng.uniform(0.3, 0.9)), int(bar * 1.2)):  # tool icons
        draw.rectangle((x, bar * 0.2, x + bar * 0.7, bar * 0.8), fill=int(rng.integers(120, 230)))
    status = int(height * rng.uniform(0.0, 0.05))
    if status:
        draw.rectangle((0, height - status, width, height), fill=int(rng.integers(30, 100)))
    left_panel = int(width * rng.uniform(0.1, 0.22)) if rng.random() < 0.8 else 0
    right_panel = int(width * rng.uniform(0.1, 0.25)) if rng.random() < 0.5 else 0
    font = max(6, bar // 2)
    if left_panel:
        draw.rectangle((0, bar, left_panel, height - status), fill=int(rng.integers(15, 70)))
        y = bar + 4
        for tile in tiles[1:] + tiles[:1]:  # thumbnails of the series
            if y + left_panel > height - status:
                break
            _place(canvas, tile, (4, y, left_panel - 8, left_panel - 8))
            y += left_panel + int(rng.integers(0, font + 2))
    if right_panel:
        draw.rectangle((width - right_panel, bar, width, height - status), fill=int(rng.integers(20, 80)))
        for y in range(bar + 4, height - status - font, font + 4):
            _text(draw, (width - right_panel + 3, y), rng, font, int(rng.integers(150, 255)))
    view = (left_panel, bar, width - left_panel - right_panel, height - bar - status)
    margin = rng.uniform(0.0, 0.12)
    inner = (view[0] + int(view[2] * margin / 2), view[1] + int(view[3] * margin / 2),
             int(view[2] * (1 - margin)), int(view[3] * (1 - margin)))
    _place(canvas, tiles[0], inner)
    for corner in range(4):  # the viewer's overlay text in the corners of the image
        x = view[0] + 4 if corner % 2 == 0 else view[0] + view[2] - 8 * font
        y = view[1] + 4 if corner < 2 else view[1] + view[3] - 3 * font
        for line in range(int(rng.integers(1, 4))):
            _text(draw, (x, y + line * (font + 2)), rng, font, int(rng.integers(180, 256)))
    for _ in range(int(rng.integers(0, 3))):  # measurements and annotations
        x0, y0 = inner[0] + rng.uniform(0.2, 0.8) * inner[2], inner[1] + rng.uniform(0.2, 0.8) * inner[3]
        x1, y1 = x0 + rng.uniform(-0.3, 0.3) * inner[2], y0 + rng.uniform(-0.3, 0.3) * inner[3]
        fill = int(rng.integers(200, 256))
        if rng.random() < 0.5:
            draw.line((x0, y0, x1, y1), fill=fill, width=max(1, side // 200))
        else:
            draw.ellipse((min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)), outline=fill, width=max(1, side // 200))
    return np.asarray(canvas)


def collage(tiles: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """2 radiographs side by side (or one above the other), or a 2 x 2, 3 x 1 or 3 x 3 grid."""
    columns, rows = [(2, 1), (2, 1), (2, 2), (3, 3), (3, 1), (1, 2)][int(rng.integers(0, 6))]
    return grid(tiles, columns, rows, rng)


def grid(tiles: list[np.ndarray], columns: int, rows: int, rng: np.random.Generator) -> np.ndarray:
    """``tiles`` in a ``columns`` x ``rows`` grid, with or without gaps, each kept in shape or stretched."""
    side = max(tiles[0].shape)
    gap = int(side * rng.uniform(0.0, 0.05))
    canvas = Image.new("L", (columns * side + (columns + 1) * gap, rows * side + (rows + 1) * gap),
                       int(rng.choice([0, 0, 255, int(rng.integers(20, 200))])))
    keep = rng.random() < 0.5
    for i in range(columns * rows):
        c, r = i % columns, i // columns
        _place(canvas, tiles[i % len(tiles)], (gap + c * (side + gap), gap + r * (side + gap), side, side), keep)
    return np.asarray(canvas)


def one_lung(tiles: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """The left or right part of a radiograph (25-45 % of its width), as a crop of one lung. Not wider: a
    tightly framed radiograph of both lungs is 60 % or more of a loosely framed one's width."""
    image = tiles[0]
    cut = int(image.shape[1] * rng.uniform(0.25, 0.45))
    part = image[:, :cut] if rng.random() < 0.5 else image[:, image.shape[1] - cut:]
    if rng.random() < 0.3:  # cropped in height too
        top = int(image.shape[0] * rng.uniform(0.0, 0.15))
        part = part[top: top + int(image.shape[0] * rng.uniform(0.7, 0.9))]
    return np.ascontiguousarray(part)


def small_on_canvas(tiles: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """The radiograph at 20-40 % of the canvas's side, somewhere on black, white or grey."""
    side = max(tiles[0].shape)
    canvas_side = int(side / rng.uniform(0.2, 0.4))
    width, height = int(canvas_side * rng.uniform(0.8, 1.3)), canvas_side
    background = int(rng.choice([0, 255, int(rng.integers(60, 200))]))
    canvas = Image.new("L", (width, height), background)
    scale = canvas_side * rng.uniform(0.2, 0.4) / side
    small = (max(1, round(tiles[0].shape[1] * scale)), max(1, round(tiles[0].shape[0] * scale)))
    at = (int(rng.integers(0, width - small[0] + 1)), int(rng.integers(0, height - small[1] + 1)))
    canvas.paste(Image.fromarray(tiles[0]).resize(small, Image.Resampling.BILINEAR), at)
    return np.asarray(canvas)


def text_page(_: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """A page of text, dark on light or light on dark (a report sent instead of its image)."""
    width, height = int(rng.integers(300, 700)), int(rng.integers(350, 800))
    dark = rng.random() < 0.3
    page = Image.new("L", (width, height), int(rng.integers(0, 40)) if dark else int(rng.integers(215, 256)))
    draw = ImageDraw.Draw(page)
    size = int(rng.integers(9, 24))
    for y in range(10, height - size, int(size * 1.5)):
        _text(draw, (10, y), rng, size, int(rng.integers(200, 256)) if dark else int(rng.integers(0, 60)))
    return np.asarray(page)


_MAKERS = {KINDS[1]: screenshot, KINDS[2]: collage, KINDS[3]: one_lung, KINDS[4]: small_on_canvas, KINDS[5]: text_page}
# The mistakes the benches and tests make of radiographs the gate never saw, one maker per named layout.
MISTAKES = {
    "viewer screenshot": screenshot,
    "two side by side": lambda tiles, rng: grid(tiles, 2, 1, rng),
    "2 x 2 grid": lambda tiles, rng: grid(tiles, 2, 2, rng),
    "3 x 3 grid": lambda tiles, rng: grid(tiles, 3, 3, rng),
    "one lung (half)": one_lung,
    "small radiograph on a canvas": small_on_canvas,
}


def compose(kind: str, tiles: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """One image of ``kind`` (one of :data:`MADE`) made of the radiographs ``tiles`` (uint8 (H, W), the
    first shown large), at their resolution."""
    return _MAKERS[kind](tiles, rng)


def synthesise(images: np.ndarray, per_kind: int, size: int, fit: Fit,
               seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``per_kind`` images of each kind of :data:`MADE` made of ``images`` (uint8 (N, S, S), training
    radiographs as the model sees them), at the model's input size through ``fit``: (pixels (M, size,
    size), the kind of each (index into :data:`KINDS`))."""
    rng = np.random.default_rng(seed)
    out, kinds = [], []
    for k, kind in enumerate(MADE, start=1):
        for _ in range(per_kind):
            tiles = [images[i] for i in rng.integers(0, len(images), max(1, TILES[kind]))]
            out.append(np.asarray(resize(Image.fromarray(compose(kind, tiles, rng)), size, fit)))
            kinds.append(k)
    return np.stack(out), np.asarray(kinds)


def tight(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``image`` (uint8 (S, S)) cropped to 60-95 % of its width and 75-95 % of its height, anywhere within
    it, and scaled back to S x S: a radiograph framed tightly but whole, both lungs in it, the chest wall at
    the edges (the kind probe's in-scope side, beside the one-lung kind's 25-45 % of the width)."""
    height, width = image.shape
    keep = rng.uniform((0.75, 0.6), 0.95)
    h, w = max(8, int(height * keep[0])), max(8, int(width * keep[1]))
    top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
    crop = Image.fromarray(np.ascontiguousarray(image[top:top + h, left:left + w]))
    return np.asarray(crop.resize((width, height), Image.Resampling.BILINEAR))


def augment(images: np.ndarray, seed: int = 0) -> np.ndarray:
    """Mild, realistic variants of radiographs (uint8 (N, S, S)): a few degrees of rotation, zoom from
    0.85 to 1.1, shifts, a left-right flip, contrast, gamma, blur or noise; what a real upload varies by.
    Three in four are framed tightly instead (:func:`tight`), as many exports crop to the lungs."""
    rng = np.random.default_rng(seed)
    out = []
    for image in images:
        pil = Image.fromarray(image)
        size = pil.width
        if rng.random() < 0.75:
            canvas = Image.fromarray(tight(image, rng))
        else:
            zoom = rng.uniform(0.85, 1.1)
            pil = pil.rotate(rng.uniform(-8, 8), Image.Resampling.BILINEAR, fillcolor=int(rng.choice([0, image.min()])))
            new = max(8, round(size * zoom))
            scaled = pil.resize((new, new), Image.Resampling.BILINEAR)
            canvas = Image.new("L", (size, size), 0)
            shift = rng.integers(-size // 16, size // 16 + 1, 2)
            canvas.paste(scaled, ((size - new) // 2 + int(shift[0]), (size - new) // 2 + int(shift[1])))
        if rng.random() < 0.5:
            canvas = canvas.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if rng.random() < 0.3:
            canvas = canvas.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
        x = np.asarray(canvas, np.float32) / 255.0
        x = np.clip((x - 0.5) * rng.uniform(0.8, 1.25) + 0.5 + rng.uniform(-0.08, 0.08), 0, 1) ** rng.uniform(0.7, 1.4)
        if rng.random() < 0.3:
            x = x + rng.normal(0, rng.uniform(0.005, 0.03), x.shape)
        out.append((255 * np.clip(x, 0, 1)).round().astype(np.uint8))
    return np.stack(out) if out else images[:0]
