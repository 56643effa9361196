"""The out-of-scope images of ``bench_scope.py``, rebuilt from what is installed here.

Every group is written as files into a folder, so the bench scores them exactly as ``pneumoscan predict``
does (decoding, rules, network). Sources: pydicom's and pynetdicom's bundled test DICOMs, scikit-image's
sample images (``pip install scikit-image``: only the bench needs it), text rendered with Pillow, noise
and gradients drawn with numpy, the radiographs of ``chest_xray/test`` rotated, mirrored and inverted, and
what users send by mistake (:mod:`pneumoscan.models.scope_kinds`) made of radiographs of ``chest_xray/test``
and ``chest_xray_originals`` at their own resolution: never of training images, which the gate learned from.
"""

from __future__ import annotations

import functools
import shutil
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from pneumoscan.models import scope_kinds as kinds

TRANSFORMS = {
    "rotated 90": lambda im: im.transpose(Image.Transpose.ROTATE_90),
    "rotated 180": lambda im: im.transpose(Image.Transpose.ROTATE_180),
    "rotated 270": lambda im: im.transpose(Image.Transpose.ROTATE_270),
    "mirrored top-bottom": lambda im: im.transpose(Image.Transpose.FLIP_TOP_BOTTOM),
    "inverted": ImageOps.invert,
}


def build(out: Path, test: Path, per_transform: int = 60, seed: int = 0, originals: Path | None = None,
          per_kind: int = 60, keep: bool = False) -> dict[str, Path]:
    """Write every group under ``out``; return group name -> folder. The kinds users send by mistake are
    made of radiographs of ``test`` and ``originals`` (``per_kind`` of each). ``keep``: the images already
    under ``out`` (another model scored on the same files)."""
    if keep and out.is_dir():
        return {p.name.replace("_", " "): p for p in sorted(out.iterdir()) if p.is_dir()}
    if out.exists():
        shutil.rmtree(out)
    rng = np.random.default_rng(seed)
    groups: dict[str, Path] = {}

    def folder(name: str) -> Path:
        path = out / name.replace(" ", "_")
        path.mkdir(parents=True, exist_ok=True)
        groups[name] = path
        return path

    _dicoms(folder("DICOM, other modalities"))
    try:
        import skimage  # noqa: F401 - only this group needs it
    except ImportError:
        print("scikit-image is not installed: the group of its sample images is left out")
    else:
        _skimage(folder("photos and scans (scikit-image)"))
    _text(folder("rendered text"), rng)
    _noise(folder("noise"), rng)
    _gradients(folder("gradients"))
    _degenerate(folder("degenerate"), rng)
    radiographs = sorted(p for p in test.rglob("*.jpeg"))
    chosen = [radiographs[i] for i in sorted(rng.choice(len(radiographs), per_transform, replace=False))]
    for name, transform in TRANSFORMS.items():
        target = folder(f"radiograph {name}")
        for path in chosen:
            with Image.open(path) as im:
                transform(im.convert("L")).save(target / f"{path.parent.name}_{path.stem}.png")
    sources = radiographs + (sorted(originals.rglob("*.jpeg")) if originals is not None else [])
    for name, make in MISTAKES.items():
        _mistakes(folder(name), make, sources, per_kind, rng)
    return groups


def _mistakes(target: Path, make, sources: list[Path], count: int, rng: np.random.Generator) -> None:
    """``count`` images made by ``make(tiles, rng)`` of radiographs drawn from ``sources`` (up to 9 each)."""
    for i in range(count):
        tiles = [_tile(sources[j]) for j in rng.choice(len(sources), 9, replace=False)]
        Image.fromarray(make(tiles, rng)).save(target / f"{i:03d}.png")


@functools.lru_cache(maxsize=1024)
def _tile(path: Path) -> np.ndarray:
    """The radiograph at ``path`` at most ``TILE_SIDE`` pixels on a side: a screen's resolution, what a
    screenshot or a collage holds (JPEGs decoded at a reduced scale: the originals are large)."""
    with Image.open(path) as im:
        im.draft("L", (TILE_SIDE, TILE_SIDE))
        tile = ImageOps.exif_transpose(im).convert("L")
        tile.thumbnail((TILE_SIDE, TILE_SIDE))
        return np.asarray(tile)


TILE_SIDE = 1024
MISTAKES = kinds.MISTAKES


def _dicoms(target: Path) -> None:
    """Test DICOMs of pydicom and pynetdicom with pixel data whose Modality is not CR or DX."""
    import pydicom
    import pydicom.data

    roots = [Path(pydicom.data.__file__).parent / "test_files"]
    try:
        import pynetdicom

        roots.append(Path(pynetdicom.__file__).parent / "tests" / "dicom_files")
    except ImportError:
        pass
    seen = set()
    for root in roots:
        for path in sorted(root.rglob("*.dcm")):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    ds = pydicom.dcmread(path)
                    modality = str(ds.get("Modality", "") or "")
                    if "PixelData" not in ds or modality in ("CR", "DX"):
                        continue
                    ds.pixel_array  # noqa: B018 - only files whose pixels decode here
            except Exception:  # noqa: BLE001 - deliberately broken test files
                continue
            key = (modality, ds.get("Rows"), ds.get("Columns"), str(ds.get("SOPInstanceUID", "")))
            if key in seen:
                continue
            seen.add(key)
            shutil.copyfile(path, target / f"{root.parent.name}_{path.name}")


def _skimage(target: Path) -> None:
    from skimage import data

    names = ["astronaut", "binary_blobs", "brick", "camera", "cat", "cell", "checkerboard", "chelsea", "clock",
             "coffee", "coins", "colorwheel", "grass", "gravel", "horse", "hubble_deep_field", "immunohistochemistry",
             "logo", "microaneurysms", "moon", "page", "retina", "rocket", "shepp_logan_phantom", "text"]
    for name in names:
        try:
            image = np.asarray(getattr(data, name)())
        except Exception:  # noqa: BLE001 - a sample that needs a download (pooch) is skipped
            continue
        if image.dtype == bool:
            image = image.astype(np.uint8) * 255
        if image.dtype != np.uint8:
            image = (255 * (image - image.min()) / max(float(np.ptp(image)), 1e-9)).astype(np.uint8)
        if image.ndim == 3:  # grey, as a user who converts a photo to grey would send it
            image = np.asarray(Image.fromarray(image[..., :3]).convert("L"))
        Image.fromarray(image).save(target / f"{name}.png")


def _text(target: Path, rng: np.random.Generator) -> None:
    words = ["patient", "report", "findings", "lungs", "clear", "no", "acute", "disease", "chest", "radiograph", "impression", "the", "of", "and", "heart", "size", "normal", "pleural", "effusion", "consolidation", "history", "cough", "fever"]
    for i in range(12):
        size = (int(rng.integers(600, 1200)), int(rng.integers(800, 1400)))
        dark = i % 3 == 2
        page = Image.new("L", size, 20 if dark else 250)
        draw = ImageDraw.Draw(page)
        font = ImageFont.load_default(size=int(rng.integers(14, 40)))
        y = 20
        while y < size[1] - 40:
            line = " ".join(rng.choice(words, int(rng.integers(3, 10))))
            draw.text((20, y), line, fill=235 if dark else 10, font=font)
            y += int(font.size * 1.5)
        page.save(target / f"page_{i:02d}.png")


def _noise(target: Path, rng: np.random.Generator) -> None:
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (512, 512), dtype=np.uint8)).save(target / f"uniform_{i}.png")
        gauss = np.clip(rng.normal(128, 20 + 15 * i, (512, 512)), 0, 255).astype(np.uint8)
        Image.fromarray(gauss).save(target / f"gaussian_{i}.png")
        smooth = Image.fromarray(rng.integers(0, 256, (16 * (i + 1), 16 * (i + 1)), dtype=np.uint8))
        smooth.resize((512, 512), Image.Resampling.BICUBIC).save(target / f"smooth_{i}.png")


def _gradients(target: Path) -> None:
    y, x = np.mgrid[0:512, 0:512] / 511.0
    fields = {"horizontal": x, "vertical": y, "diagonal": (x + y) / 2, "radial": np.hypot(x - 0.5, y - 0.5) / 0.71,
              "radial_inverted": 1 - np.hypot(x - 0.5, y - 0.5) / 0.71, "sine": 0.5 + 0.5 * np.sin(12 * x) * np.cos(9 * y),
              "vignette": np.exp(-((x - 0.5) ** 2 + (y - 0.5) ** 2) * 6)}
    for name, field in fields.items():
        Image.fromarray((255 * np.clip(field, 0, 1)).astype(np.uint8)).save(target / f"{name}.png")


def _degenerate(target: Path, rng: np.random.Generator) -> None:
    one = np.zeros((256, 256), np.uint8)
    one[100, 120] = 255
    Image.fromarray(one).save(target / "one_bright_pixel.png")
    few = (rng.integers(0, 3, (300, 300)) * 120).astype(np.uint8)
    Image.fromarray(few).save(target / "three_grey_levels.png")
    levels = np.repeat(np.repeat(rng.integers(0, 4, (8, 8)) * 80, 64, 0), 64, 1).astype(np.uint8)
    Image.fromarray(levels).save(target / "four_grey_blocks.png")
    flat = np.full((400, 400), 130, np.uint8) + rng.integers(0, 3, (400, 400)).astype(np.uint8)
    Image.fromarray(flat).save(target / "near_flat.png")
    mostly = np.full((400, 400), 90, np.uint8)
    mostly[180:220, 180:220] = rng.integers(0, 256, (40, 40))
    Image.fromarray(mostly).save(target / "flat_with_a_patch.png")
    Image.fromarray(np.full((64, 64), np.nan, np.float32), mode="F").save(target / "all_nan.tiff")
    partly = rng.random((128, 128)).astype(np.float32)
    partly[::7] = np.inf
    Image.fromarray(partly, mode="F").save(target / "float_with_inf.tiff")
