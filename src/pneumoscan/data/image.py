"""Decode any supported radiograph (JPEG, PNG, DICOM, ...) into one 8-bit grayscale array.

Everything that reads pixels (the cache, prediction, the server) goes through :func:`read_image`, so a
file is decoded the same way for training and for inference. DICOM files are decoded by
:mod:`pneumoscan.data.dicom_image`; the limits both decoders share live in :mod:`pneumoscan.data.pixels`.
"""

from __future__ import annotations

import glob
import io
import os
import re
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np

# TIFF and WEBP: imported to register them, as Pillow's preinit() does not (``formats=`` names registered ones).
from PIL import Image, ImageFile, ImageOps, TiffImagePlugin, UnidentifiedImageError, WebPImagePlugin  # noqa: F401

from pneumoscan.data.dicom_image import decode_dicom, is_dicom, probe_dicom
from pneumoscan.data.pixels import MAX_FILE_BYTES, MAX_PIXELS, check_pixels, to_uint8
from pneumoscan.errors import ImageReadError, reason

Fit = Literal["pad", "crop", "stretch"]
FITS: tuple[str, ...] = ("pad", "crop", "stretch")

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".dcm", ".dicom", ".bmp", ".tif", ".tiff", ".webp"})

# What each extension promises. A file whose content is another format (a PNG named .dcm) is refused:
# it is a sign of a broken export, and the fix (rename it) is the user's to make knowingly.
_FORMATS_OF_SUFFIX = {
    ".jpg": {"JPEG", "MPO"}, ".jpeg": {"JPEG", "MPO"}, ".png": {"PNG"}, ".dcm": {"DICOM"},
    ".dicom": {"DICOM"}, ".bmp": {"BMP"}, ".tif": {"TIFF"}, ".tiff": {"TIFF"}, ".webp": {"WEBP"},
}
_SUFFIX_OF_FORMAT = {"JPEG": ".jpeg", "MPO": ".jpeg", "PNG": ".png", "DICOM": ".dcm", "BMP": ".bmp",
                     "TIFF": ".tiff", "WEBP": ".webp"}

# The formats Pillow may decode: those radiographs are exported in. Pillow knows dozens more (EPS runs
# Ghostscript, ICO, SGI, PCX...), each a parser an uploaded file could reach; they are refused by content.
# (A camera's multi-picture JPEG, MPO, is opened by the JPEG entry.)
PIL_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "TIFF", "BMP", "WEBP")
# Pillow modes that may hold colour, and the size of the sample the colour test looks at.
COLOUR_MODES: tuple[str, ...] = ("RGB", "RGBA", "P", "CMYK", "YCbCr", "LAB", "HSV", "RGBX")
COLOUR_SAMPLE = 64
UNSUPPORTED = "not an image in a supported format (JPEG, PNG, TIFF, BMP, WEBP or DICOM)"

# A truncated JPEG must be an error, not a silently grey bottom half.
ImageFile.LOAD_TRUNCATED_IMAGES = False
# We check the pixel count ourselves (with a clearer message); PIL's own check stays as a backstop for
# the decoders that call Pillow themselves (pydicom's JPEG plugins).
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


@dataclass(frozen=True)
class ImageInfo:
    """What the header says, read without decoding the pixels."""

    width: int
    height: int
    mode: str  # PIL mode, or "DICOM:<photometric interpretation>"
    format: str  # "JPEG", "PNG", "DICOM", ...


def read_image(
    source: str | os.PathLike | bytes,
    size: int | None = None,
    fit: Fit = "pad",
    *,
    name: str | None = None,
) -> np.ndarray:
    """Decode ``source`` (a path or the file's bytes) to a ``uint8`` array of shape (H, W).

    With ``size``, the image is resized to ``size`` x ``size`` keeping its aspect ratio: ``pad`` fits the
    whole image and pads with black, ``crop`` fills the square and centre-crops, ``stretch`` ignores the
    aspect ratio (how the public 224 px copies of the Kermany data were made).

    A file on disk must hold the format its extension names (a PNG named ``.dcm`` is refused); bytes
    are decoded by their content. Raises :class:`ImageReadError` naming the file and the reason for
    anything that cannot be decoded.
    """
    return _read(source, size, fit, name, colour=False)[0]


def read_image_and_colour(
    source: str | os.PathLike | bytes,
    size: int | None = None,
    fit: Fit = "pad",
    *,
    name: str | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`read_image`, and from the same decoding the image as stored when that is a colour mode
    (:data:`COLOUR_MODES`): RGB ``uint8`` (h, w, 3) shrunk to at most :data:`COLOUR_SAMPLE` pixels a side,
    enough to tell a colour picture from a grey radiograph saved in colour. ``None`` for grey images and
    DICOM (whose colour images are converted to grey by their decoder)."""
    return _read(source, size, fit, name, colour=True)


def _read(source: str | os.PathLike | bytes, size: int | None, fit: Fit, name: str | None,
          colour: bool) -> tuple[np.ndarray, np.ndarray | None]:
    label = name or (str(source) if not isinstance(source, bytes | bytearray | memoryview) else "<upload>")
    if fit not in FITS:
        raise ValueError(f"fit must be one of {FITS}, not {fit!r}")
    data = _read_bytes(source, label)
    if not data:
        raise ImageReadError(f"{label}: empty file (0 bytes)")
    suffix = _suffix(source)
    sample = None
    if is_dicom(data):
        _check_suffix(suffix, "DICOM", label)
        image = Image.fromarray(decode_dicom(data, label), mode="L")
    else:
        image, sample = _decode_pil(data, label, suffix, colour)
    if size is not None:
        image = resize(image, size, fit)
    return np.asarray(image, dtype=np.uint8), sample


def probe_image(source: str | os.PathLike | bytes, *, name: str | None = None) -> ImageInfo:
    """Read only the header: size, mode and format. Raises :class:`ImageReadError` when unreadable."""
    label = name or (str(source) if not isinstance(source, bytes | bytearray | memoryview) else "<upload>")
    data = _read_bytes(source, label)
    if not data:
        raise ImageReadError(f"{label}: empty file (0 bytes)")
    suffix = _suffix(source)
    if is_dicom(data):
        _check_suffix(suffix, "DICOM", label)
        width, height, photometric = probe_dicom(data, label)
        return ImageInfo(width, height, f"DICOM:{photometric}", "DICOM")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=PIL_FORMATS) as im:
                info = ImageInfo(im.width, im.height, im.mode, im.format or "?")
    except Image.DecompressionBombError as exc:
        raise _pil_bomb(exc, label) from None
    except UnidentifiedImageError:
        raise ImageReadError(f"{label}: {UNSUPPORTED}") from None
    except Exception as exc:  # Pillow raises many types on damaged headers (found by fuzzing)
        raise ImageReadError(f"{label}: not a readable image ({reason(exc)})") from None
    _check_suffix(suffix, info.format, label)
    check_pixels(info.width, info.height, label)
    return info


def fit_geometry(width: int, height: int, size: int, fit: Fit) -> tuple[int, int, int, int]:
    """How ``fit`` makes a ``width`` x ``height`` image square at ``size``: ``(new_width, new_height, left,
    top)``: the image is resized to the new size, then placed at (left, top) on a black square (``pad``),
    cropped from (left, top) (``crop``), or resized to the square itself (``stretch``, offsets 0)."""
    if fit == "stretch":
        return size, size, 0, 0
    scale = size / max(width, height) if fit == "pad" else size / min(width, height)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    if fit == "pad":
        return new_w, new_h, (size - new_w) // 2, (size - new_h) // 2
    return new_w, new_h, (new_w - size) // 2, (new_h - size) // 2


def resize(image: Image.Image, size: int, fit: Fit = "pad") -> Image.Image:
    """Resize a grayscale PIL image to ``size`` x ``size`` (see :func:`read_image` for ``fit``)."""
    new_w, new_h, left, top = fit_geometry(*image.size, size, fit)
    scaled = image.resize((new_w, new_h), Image.Resampling.BILINEAR, reducing_gap=3.0)
    if fit == "pad":
        canvas = Image.new("L", (size, size), 0)
        canvas.paste(scaled, (left, top))
        return canvas
    if fit == "crop":
        return scaled.crop((left, top, left + size, top + size))
    return scaled


def read_file_bytes(path: str | os.PathLike, name: str | None = None) -> bytes:
    """The bytes of the regular file at ``path``, never more than ``MAX_FILE_BYTES``.

    A FIFO, a socket, a device (``/dev/zero`` behind a symlink) or a folder is refused without being
    opened for reading: their reported size says nothing about what a read would return, or a read
    would wait for ever. Raises :class:`ImageReadError` naming the file.
    """
    label = name or os.fsdecode(path)
    return _read_bytes(path, label)


_KINDS = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def open_regular_file(path: str | os.PathLike, name: str | None = None) -> BinaryIO:
    """``path`` opened for binary reading, once it is known to be a regular file of at most
    ``MAX_FILE_BYTES``: the one check every reader of an input file goes through (:func:`read_image`,
    the DICOM identifiers). A FIFO, socket, device or folder raises :class:`ImageReadError` without
    being opened for reading, so nothing waits for a writer; ``OSError`` passes through.
    """
    label = name or os.fsdecode(path)
    _check_regular(os.stat(path).st_mode, label)  # follows symlinks: a link to a device is a device
    # O_NONBLOCK: a file swapped for a FIFO after the check must not make open() wait for a writer.
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    fh = os.fdopen(fd, "rb")
    try:
        info = os.fstat(fh.fileno())
        _check_regular(info.st_mode, label)
        _check_file_size(info.st_size, label)
    except BaseException:
        fh.close()
        raise
    return fh


def _read_bytes(source: str | os.PathLike | bytes, label: str) -> bytes:
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source)
    path = Path(source)
    try:
        with open_regular_file(path, label) as fh:
            data = fh.read(MAX_FILE_BYTES + 1)  # never more than the limit, whatever the size said
        _check_file_size(len(data), label)
        return data
    except ImageReadError:
        raise
    except FileNotFoundError as exc:
        if glob.has_magic(os.fsdecode(path)):
            raise ImageReadError(f"{label}: no files match this pattern") from None
        raise ImageReadError(f"{label}: cannot read file ({reason(exc)})") from None
    except OSError as exc:
        raise ImageReadError(f"{label}: cannot read file ({reason(exc)})") from None


def _check_regular(mode: int, label: str) -> None:
    if stat.S_ISDIR(mode):
        raise ImageReadError(f"{label}: is a folder, not an image file")
    if not stat.S_ISREG(mode):
        kind = next((what for test, what in _KINDS if test(mode)), "a special file")
        raise ImageReadError(f"{label}: not a regular file ({kind}); only image files are read")


def _check_file_size(size: int, label: str) -> None:
    if size > MAX_FILE_BYTES:
        raise ImageReadError(
            f"{label}: file too large ({size / 2**20:,.0f} MiB, over the limit of "
            f"{MAX_FILE_BYTES / 2**20:,.0f} MiB; set PNEUMOSCAN_MAX_FILE_BYTES to raise it)"
        )


def _suffix(source: str | os.PathLike | bytes) -> str | None:
    if isinstance(source, bytes | bytearray | memoryview):
        return None
    return Path(source).suffix.lower()


def _check_suffix(suffix: str | None, actual: str, label: str) -> None:
    expected = _FORMATS_OF_SUFFIX.get(suffix or "")
    if expected is not None and actual not in expected:
        better = _SUFFIX_OF_FORMAT.get(actual, f" matching {actual}")
        raise ImageReadError(
            f"{label}: wrong extension: the file is {actual}, not {(suffix or '')[1:].upper()}; "
            f"rename it to {better}"
        )


def _decode_pil(data: bytes, label: str, suffix: str | None = None,
                colour: bool = False) -> tuple[Image.Image, np.ndarray | None]:
    """(the grey image, and with ``colour`` the colour sample of :func:`read_image_and_colour`)."""
    try:
        with warnings.catch_warnings():
            # A corrupt EXIF block only loses the orientation tag: the pixels are still good.
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=PIL_FORMATS)
            check_pixels(image.width, image.height, label)
            _check_suffix(suffix, image.format or "?", label)
            # Never JPEG's reduced-scale decoding (`draft`): it is faster on large files, but its
            # DCT-domain shrinking differs from the resize that every other input goes through, so the
            # same picture given as its pixels would get another probability (up to 0.02 measured).
            image.load()
            ImageOps.exif_transpose(image, in_place=True)
            if image.mode == "F" and not np.isfinite(np.asarray(image)).all():  # scaling would hide them
                raise ImageReadError(f"{label}: float pixels with NaN or infinity; not a radiograph")
            sample = _colour_sample(image) if colour and image.mode in COLOUR_MODES else None
            return _to_grayscale(image), sample
    except ImageReadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _pil_bomb(exc, label) from None
    except UnidentifiedImageError:
        what = "not a DICOM file (no DICM marker)" if suffix in (".dcm", ".dicom") else UNSUPPORTED
        raise ImageReadError(f"{label}: {what}") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageReadError(f"{label}: corrupt or truncated image ({reason(exc)})") from None
    except Exception as exc:  # Pillow's plugins raise TypeError, struct.error, ... on damaged files (fuzzing)
        raise ImageReadError(f"{label}: corrupt image ({type(exc).__name__}: {reason(exc)})") from None


def _colour_sample(image: Image.Image) -> np.ndarray:
    """``image`` (decoded, in a colour mode) as RGB, shrunk to at most ``COLOUR_SAMPLE`` pixels a side by
    averaging blocks of pixels (cheap, and it smooths compression noise in the colour channels)."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    factor = -(-max(rgb.size) // COLOUR_SAMPLE)
    return np.asarray(rgb.reduce(factor) if factor > 1 else rgb)


def _to_grayscale(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode == "L":
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return Image.fromarray(to_uint8(np.asarray(image)), mode="L")
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        # Transparent regions become black, the colour of the background around a radiograph.
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(canvas, rgba).convert("L")
    if mode == "CMYK":
        return image.convert("RGB").convert("L")
    return image.convert("L")


def read_pixels(pixels: np.ndarray | Image.Image, size: int | None = None, fit: Fit = "pad", *,
                name: str = "<array>") -> np.ndarray:
    """One image given as pixels (a numpy array or a PIL image) -> ``uint8`` (H, W), as :func:`read_image`
    treats a file holding the same pixels: grayscale conversion, depth scaling, ``fit`` and resize.

    Arrays are ``(H, W)`` or ``(H, W, C)`` with C = 1 (grey), 3 (RGB) or 4 (RGBA). ``uint8`` is taken
    as is; other integer types (``uint16``, ...) are scaled by their own range, as a 16-bit PNG or a
    DICOM without a window is; floats must lie in [0, 1] (``uint8 / 255``, what torchvision's
    ``ToTensor`` gives) because their scale cannot be guessed. Anything else raises
    :class:`ImageReadError` saying what is expected.
    """
    if fit not in FITS:
        raise ValueError(f"fit must be one of {FITS}, not {fit!r}")
    image = pixels if isinstance(pixels, Image.Image) else _array_to_image(np.asarray(pixels), name)
    check_pixels(image.width, image.height, name)
    image = _to_grayscale(image)
    if size is not None:
        image = resize(image, size, fit)
    return np.asarray(image, dtype=np.uint8)


def _array_to_image(array: np.ndarray, name: str) -> Image.Image:
    expected = "one image as (H, W) or (H, W, C) with C = 1, 3 or 4"
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ImageReadError(f"{name}: an array of shape {array.shape}; expected {expected}")
    if array.dtype == np.bool_ or not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ImageReadError(f"{name}: pixels of type {array.dtype}; expected uint8, uint16 (or another integer "
                             "type) or float in [0, 1]")
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ImageReadError(f"{name}: float pixels with NaN or infinity")
        low, high = float(array.min()), float(array.max())
        if low < 0.0 or high > 1.0:
            raise ImageReadError(
                f"{name}: float pixels from {low:g} to {high:g}; floats must lie in [0, 1] (uint8 / 255). "
                "Pass raw values as an integer array (uint8, uint16) instead: they are scaled as a file's are")
        array = np.rint(array * 255.0).astype(np.uint8)
    elif array.dtype != np.uint8:
        array = to_uint8(array)
    if array.ndim == 2:
        return Image.fromarray(np.ascontiguousarray(array), mode="L")
    return Image.fromarray(np.ascontiguousarray(array), mode="RGB" if array.shape[-1] == 3 else "RGBA")


_PIL_PIXELS = re.compile(r"\((\d+) pixels\)")


def _pil_bomb(exc: Exception, label: str) -> ImageReadError:
    """Pillow's own refusal quotes its internal limit (twice ours); say ours, as ``check_pixels`` does."""
    found = _PIL_PIXELS.search(str(exc))
    count = f"{int(found.group(1)):,} pixels" if found else "the image"
    return ImageReadError(f"{label}: refused as a decompression bomb: {count} is over the limit of "
                          f"{MAX_PIXELS:,} (set PNEUMOSCAN_MAX_PIXELS to raise it)")
