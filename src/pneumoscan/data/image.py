"""Decode any supported radiograph (JPEG, PNG, DICOM, ...) into one 8-bit grayscale array.

Everything that reads pixels (the cache, prediction, the server) goes through :func:`read_image`, so a
file is decoded the same way for training and for inference.
"""

from __future__ import annotations

import contextlib
import glob
import io
import os
import re
import stat
import struct
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from pneumoscan.errors import ImageReadError, reason

Fit = Literal["pad", "crop", "stretch"]
FITS: tuple[str, ...] = ("pad", "crop", "stretch")

# Real radiographs are at most ~4,300 px a side (18 Mpx); anything far beyond is a decompression bomb.
MAX_PIXELS = int(os.environ.get("PNEUMOSCAN_MAX_PIXELS", 64_000_000))
# A chest DICOM is tens of MB; a file far larger is refused before it is read into memory.
MAX_FILE_BYTES = int(os.environ.get("PNEUMOSCAN_MAX_FILE_BYTES", 512 * 1024 * 1024))
# Everything in a DICOM data set but its pixels (patient, study, overlays, an icon) stays far below this.
# A deflated data set may inflate to its pixels' size plus this much, never more.
MAX_DICOM_HEADER_BYTES = 8 * 1024 * 1024
_DEFLATED = "1.2.840.10008.1.2.1.99"
_EXPLICIT_LITTLE = "1.2.840.10008.1.2.1"
_INFLATE_CHUNK = 1024 * 1024

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".dcm", ".dicom", ".bmp", ".tif", ".tiff", ".webp"})

# What each extension promises. A file whose content is another format (a PNG named .dcm) is refused:
# it is a sign of a broken export, and the fix (rename it) is the user's to make knowingly.
_FORMATS_OF_SUFFIX = {
    ".jpg": {"JPEG", "MPO"}, ".jpeg": {"JPEG", "MPO"}, ".png": {"PNG"}, ".dcm": {"DICOM"},
    ".dicom": {"DICOM"}, ".bmp": {"BMP"}, ".tif": {"TIFF"}, ".tiff": {"TIFF"}, ".webp": {"WEBP"},
}
_SUFFIX_OF_FORMAT = {"JPEG": ".jpeg", "MPO": ".jpeg", "PNG": ".png", "DICOM": ".dcm", "BMP": ".bmp",
                     "TIFF": ".tiff", "WEBP": ".webp"}

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


def is_dicom(head: bytes) -> bool:
    return len(head) >= 132 and head[128:132] == b"DICM"


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
    label = name or (str(source) if not isinstance(source, bytes | bytearray | memoryview) else "<upload>")
    if fit not in FITS:
        raise ValueError(f"fit must be one of {FITS}, not {fit!r}")
    data = _read_bytes(source, label)
    if not data:
        raise ImageReadError(f"{label}: empty file (0 bytes)")
    suffix = _suffix(source)
    if is_dicom(data):
        _check_suffix(suffix, "DICOM", label)
        with _corrupt_dicom(label):
            pixels = _decode_dicom(_inflate_if_deflated(data, label), label)
        image = Image.fromarray(pixels, mode="L")
    else:
        image = _decode_pil(data, label, size, suffix)
    if size is not None:
        image = resize(image, size, fit)
    return np.asarray(image, dtype=np.uint8)


def probe_image(source: str | os.PathLike | bytes, *, name: str | None = None) -> ImageInfo:
    """Read only the header: size, mode and format. Raises :class:`ImageReadError` when unreadable."""
    label = name or (str(source) if not isinstance(source, bytes | bytearray | memoryview) else "<upload>")
    data = _read_bytes(source, label)
    if not data:
        raise ImageReadError(f"{label}: empty file (0 bytes)")
    suffix = _suffix(source)
    if is_dicom(data):
        _check_suffix(suffix, "DICOM", label)
        with _corrupt_dicom(label):
            ds = _dcmread(_inflate_if_deflated(data, label), label, stop_before_pixels=True)
            _check_dicom_pixels(ds, label)
            return ImageInfo(int(ds.get("Columns", 0)), int(ds.get("Rows", 0)),
                             f"DICOM:{ds.get('PhotometricInterpretation', '?')}", "DICOM")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                info = ImageInfo(im.width, im.height, im.mode, im.format or "?")
    except Image.DecompressionBombError as exc:
        raise _pil_bomb(exc, label) from None
    except Exception as exc:  # Pillow raises many types on damaged headers (found by fuzzing)
        raise ImageReadError(f"{label}: not a readable image ({reason(exc)})") from None
    _check_suffix(suffix, info.format, label)
    _check_pixels(info.width, info.height, label)
    return info


def resize(image: Image.Image, size: int, fit: Fit = "pad") -> Image.Image:
    """Resize a grayscale PIL image to ``size`` x ``size`` (see :func:`read_image` for ``fit``)."""
    width, height = image.size
    if fit == "stretch":
        return image.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
    scale = size / max(width, height) if fit == "pad" else size / min(width, height)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    scaled = image.resize((new_w, new_h), Image.Resampling.BILINEAR, reducing_gap=3.0)
    if fit == "pad":
        canvas = Image.new("L", (size, size), 0)
        canvas.paste(scaled, ((size - new_w) // 2, (size - new_h) // 2))
        return canvas
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return scaled.crop((left, top, left + size, top + size))


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Scale any-depth pixel values to 0..255 by their own range (12/16-bit and float images)."""
    if pixels.dtype == np.uint8:
        return pixels
    values = pixels.astype(np.float32)
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros(values.shape, np.uint8)
    low, high = float(values[finite].min()), float(values[finite].max())
    values = np.where(finite, values, low)
    if high <= low:
        return np.zeros(values.shape, np.uint8)
    return np.clip((values - low) * (255.0 / (high - low)) + 0.5, 0, 255).astype(np.uint8)


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


def _read_bytes(source: str | os.PathLike | bytes, label: str) -> bytes:
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source)
    path = Path(source)
    try:
        _check_regular(os.stat(path).st_mode, label)  # follows symlinks: a link to a device is a device
        # O_NONBLOCK: a file swapped for a FIFO after the check must not make open() wait for a writer.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
        with os.fdopen(fd, "rb") as fh:
            info = os.fstat(fh.fileno())
            _check_regular(info.st_mode, label)
            _check_file_size(info.st_size, label)
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


def _decode_pil(data: bytes, label: str, size: int | None, suffix: str | None = None) -> Image.Image:
    try:
        with warnings.catch_warnings():
            # A corrupt EXIF block only loses the orientation tag: the pixels are still good.
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            _check_pixels(image.width, image.height, label)
            _check_suffix(suffix, image.format or "?", label)
            if size is not None and image.format == "JPEG":
                # Decoding a JPEG at 1/2, 1/4 or 1/8 scale is several times faster and loses
                # nothing once we shrink it to `size` anyway.
                image.draft("L", (size, size))
            image.load()
            image = ImageOps.exif_transpose(image)
            return _to_grayscale(image)
    except ImageReadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _pil_bomb(exc, label) from None
    except UnidentifiedImageError:
        what = "not a DICOM file (no DICM marker)" if suffix in (".dcm", ".dicom") else "not an image"
        raise ImageReadError(f"{label}: {what} (unknown or unsupported format)") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageReadError(f"{label}: corrupt or truncated image ({reason(exc)})") from None
    except Exception as exc:  # Pillow's plugins raise TypeError, struct.error, ... on damaged files (fuzzing)
        raise ImageReadError(f"{label}: corrupt image ({type(exc).__name__}: {reason(exc)})") from None


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


@contextlib.contextmanager
def _corrupt_dicom(label: str) -> Iterator[None]:
    """Turn whatever pydicom raises on a damaged file into an ImageReadError naming the file.

    pydicom parses elements lazily and raises NotImplementedError (unknown VR), struct.error,
    BytesLengthException, TypeError... from attribute access, not only from dcmread (found by fuzzing).
    """
    try:
        yield
    except ImageReadError:
        raise
    except Exception as exc:
        raise ImageReadError(f"{label}: corrupt DICOM ({reason(exc)})") from None


def _dcmread(data: bytes, label: str, stop_before_pixels: bool = False):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=stop_before_pixels)
    except (InvalidDicomError, OSError, ValueError, KeyError, EOFError, AttributeError) as exc:
        raise ImageReadError(f"{label}: corrupt DICOM ({reason(exc)})") from None


def _decode_dicom(data: bytes, label: str) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    # The header alone first: the pixel count is checked before any pixel data is read or decompressed.
    header = _dcmread(data, label, stop_before_pixels=True)
    _check_dicom_pixels(header, label)
    ds = _dcmread(data, label)
    if "PixelData" not in ds:
        raise ImageReadError(f"{label}: DICOM has no pixel data (a report or structured document?)")
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for unsupported transfer syntaxes
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
        raise ImageReadError(
            f"{label}: cannot decode DICOM pixel data (transfer syntax {syntax}: {reason(exc)}); "
            "compressed DICOMs may need 'pip install pylibjpeg pylibjpeg-libjpeg'"
        ) from None
    if pixels.ndim == 3:  # RGB DICOM (secondary capture)
        return np.asarray(Image.fromarray(to_uint8(pixels)).convert("L"))
    try:
        values = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64)  # rescale slope / intercept
        if "VOILUTSequence" in ds:
            image = to_uint8(np.asarray(apply_voi_lut(values, ds, index=0)))
        elif "WindowCenter" in ds and "WindowWidth" in ds:
            # Scale by the window's output range, not the image's own: a window is an absolute
            # choice of contrast, and pixels outside it must saturate at 0 or 255.
            windowed = np.asarray(apply_voi_lut(values, ds, index=0), dtype=np.float64)
            low, high = np.asarray(apply_voi_lut(np.array([-1e12, 1e12]), ds, index=0), dtype=np.float64)
            image = np.clip((windowed - low) * (255.0 / max(high - low, 1e-9)) + 0.5, 0, 255).astype(np.uint8)
        else:
            image = to_uint8(values)
    except Exception as exc:
        raise ImageReadError(f"{label}: invalid DICOM value transforms ({reason(exc)})") from None
    if str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper() == "MONOCHROME1":
        image = 255 - image  # MONOCHROME1 stores bright as low values
    return image


def _check_pixels(width: int, height: int, label: str) -> None:
    if width <= 0 or height <= 0:
        raise ImageReadError(f"{label}: image has no pixels ({width}x{height})")
    if width * height > MAX_PIXELS:
        raise ImageReadError(
            f"{label}: refused as a decompression bomb: {width}x{height} = {width * height:,} pixels is over "
            f"the limit of {MAX_PIXELS:,} (set PNEUMOSCAN_MAX_PIXELS to raise it)"
        )


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
    _check_pixels(image.width, image.height, name)
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


def _check_dicom_pixels(ds, label: str) -> None:
    """Refuse, from the header alone, a DICOM whose decoded pixels would exceed the limit, and any
    multi-frame object (a cine loop, a tomosynthesis stack): a chest radiograph is one frame."""
    rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if "PixelData" not in ds and not rows and not columns:
        return  # a report: said so by the caller, which looks for the pixel data itself
    if rows <= 0 or columns <= 0 or frames <= 0 or samples <= 0:
        raise ImageReadError(f"{label}: image has no pixels ({columns}x{rows}, {frames} frame(s))")
    values = rows * columns * frames * samples
    if values > MAX_PIXELS:
        raise ImageReadError(
            f"{label}: refused as a decompression bomb: {columns}x{rows} x {frames} frame(s) x {samples} "
            f"sample(s) = {values:,} values is over the limit of {MAX_PIXELS:,} (set PNEUMOSCAN_MAX_PIXELS "
            "to raise it)"
        )
    if frames > 1:
        raise ImageReadError(f"{label}: multi-frame DICOM ({frames} frames); a chest radiograph is a single frame")


def _inflate_if_deflated(data: bytes, label: str) -> bytes:
    """``data`` itself, or for the Deflated Explicit VR Little Endian transfer syntax the same file with
    its data set inflated (and marked Explicit VR Little Endian), inflated in bounded chunks.

    pydicom would inflate the whole data set at once: a 1 MB file can hold gigabytes of zeros. Here the
    header is inflated first (at most ``MAX_DICOM_HEADER_BYTES``), its pixel count checked, and the
    rest may only inflate to the size those pixels need.
    """
    elements, start = _file_meta_elements(data)
    syntax = next((value for tag, _, value in elements if tag == 0x00020010), b"").rstrip(b"\0 ").decode("ascii", "replace")
    if syntax != _DEFLATED:
        return data
    meta = _encode_meta([(tag, vr, _uid_value(_EXPLICIT_LITTLE) if tag == 0x00020010 else value)
                         for tag, vr, value in elements])
    head = data[:128] + b"DICM" + meta
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    body = bytearray()
    pending = data[start:]

    def inflate_to(limit: int) -> None:
        nonlocal pending
        while len(body) < limit and not inflater.eof:
            chunk = inflater.decompress(pending, min(_INFLATE_CHUNK, limit - len(body)))
            pending = inflater.unconsumed_tail
            if not chunk and not pending:
                break  # the input is used up (a truncated stream: pydicom will say so)
            body.extend(chunk)

    inflate_to(MAX_DICOM_HEADER_BYTES)
    header = _dcmread(head + bytes(body), label, stop_before_pixels=True)
    _check_dicom_pixels(header, label)
    if not inflater.eof:
        if "Rows" not in header:
            raise ImageReadError(f"{label}: refused: the deflated DICOM header inflates beyond "
                                 f"{MAX_DICOM_HEADER_BYTES // 2**20} MiB without reaching the pixel data")
        bits = int(header.get("BitsAllocated", 16) or 16)
        needed = (int(header.Rows) * int(header.Columns) * int(header.get("SamplesPerPixel", 1) or 1)
                  * int(header.get("NumberOfFrames", 1) or 1) * max(bits, 8) // 8)
        limit = needed + MAX_DICOM_HEADER_BYTES
        inflate_to(limit + 1)
        if len(body) > limit:
            raise ImageReadError(
                f"{label}: refused as a decompression bomb: the deflated DICOM inflates beyond "
                f"{limit / 2**20:,.0f} MiB while its {header.Columns}x{header.Rows} image needs "
                f"{needed:,} bytes"
            )
    return head + bytes(body)


# Explicit VR Little Endian elements whose length field is 4 bytes (after 2 reserved bytes).
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})


def _file_meta_elements(data: bytes) -> tuple[list[tuple[int, bytes, bytes]], int]:
    """The raw (tag, VR, value) elements of the file meta group (0002) and the offset where the data set
    starts. The group is always Explicit VR Little Endian (PS3.10 7.1)."""
    elements, offset = [], 132
    while offset + 8 <= len(data):
        group, element = struct.unpack_from("<HH", data, offset)
        if group != 0x0002:
            break
        vr = data[offset + 4: offset + 6]
        if vr in _LONG_VRS:
            (length,) = struct.unpack_from("<I", data, offset + 8)
            value_at = offset + 12
        else:
            (length,) = struct.unpack_from("<H", data, offset + 6)
            value_at = offset + 8
        elements.append(((group << 16) | element, vr, data[value_at: value_at + length]))
        offset = value_at + length
    return elements, offset


def _encode_meta(elements: list[tuple[int, bytes, bytes]]) -> bytes:
    """The file meta group again, with its group length recomputed."""
    body = b""
    for tag, vr, value in elements:
        if tag == 0x00020000:
            continue
        tag_bytes = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
        if vr in _LONG_VRS:
            body += tag_bytes + vr + b"\0\0" + struct.pack("<I", len(value)) + value
        else:
            body += tag_bytes + vr + struct.pack("<H", len(value)) + value
    return struct.pack("<HH", 2, 0) + b"UL" + struct.pack("<HI", 4, len(body)) + body


def _uid_value(uid: str) -> bytes:
    value = uid.encode("ascii")
    return value + b"\0" if len(value) % 2 else value  # UIDs are padded to even length with NUL


_PIL_PIXELS = re.compile(r"\((\d+) pixels\)")


def _pil_bomb(exc: Exception, label: str) -> ImageReadError:
    """Pillow's own refusal quotes its internal limit (twice ours); say ours, like :func:`_check_pixels`."""
    found = _PIL_PIXELS.search(str(exc))
    count = f"{int(found.group(1)):,} pixels" if found else "the image"
    return ImageReadError(f"{label}: refused as a decompression bomb: {count} is over the limit of "
                          f"{MAX_PIXELS:,} (set PNEUMOSCAN_MAX_PIXELS to raise it)")
