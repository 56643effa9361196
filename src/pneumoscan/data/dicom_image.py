"""Decode a DICOM file's bytes into one 8-bit grayscale array, within bounds a hostile file cannot break.

pydicom parses and decompresses; this module checks the pixel count from the header before any pixel
data is read, inflates a deflated data set in bounded chunks, applies the modality and VOI transforms,
and turns whatever pydicom raises on a damaged file into an :class:`ImageReadError` naming the file.
:func:`pneumoscan.data.image.read_image` calls it for every file that starts with the DICM marker.
"""

from __future__ import annotations

import contextlib
import io
import struct
import zlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
from PIL import Image

from pneumoscan.data.codestream import FrameBomb, MalformedFrame, canonical_frame, check_decoder_cost
from pneumoscan.data.dicom_scan import LONG_VRS, check_structure
from pneumoscan.data.pixels import MAX_PIXELS, scaled_to_uint8, to_uint8
from pneumoscan.errors import ImageReadError, reason

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

# Everything in a DICOM data set but its pixels (patient, study, overlays, an icon) stays far below this.
# A deflated data set may inflate to its pixels' size plus this much, never more.
MAX_DICOM_HEADER_BYTES = 8 * 1024 * 1024
_DEFLATED = "1.2.840.10008.1.2.1.99"
_EXPLICIT_LITTLE = "1.2.840.10008.1.2.1"
_INFLATE_CHUNK = 1024 * 1024
_HEAD_CHUNK = 64 * 1024


def is_dicom(head: bytes) -> bool:
    return len(head) >= 132 and head[128:132] == b"DICM"


def decode_dicom(data: bytes, label: str) -> np.ndarray:
    """The DICOM file's bytes -> ``uint8`` (H, W), bright meaning dense whatever the photometric
    interpretation. Raises :class:`ImageReadError` naming ``label`` for anything it cannot decode."""
    with _corrupt_dicom(label):
        return _decode(_inflate_if_deflated(data, label), label)


def probe_dicom(data: bytes, label: str) -> tuple[int, int, str]:
    """(columns, rows, photometric interpretation) from the header alone, after the same checks as
    :func:`decode_dicom` makes before it reads any pixel data."""
    with _corrupt_dicom(label):
        ds = _dcmread(_inflate_if_deflated(data, label), label, stop_before_pixels=True)
        _check_dicom_pixels(ds, label)
        return int(ds.get("Columns", 0)), int(ds.get("Rows", 0)), str(ds.get("PhotometricInterpretation", "?"))


def read_dicom_dataset(data: bytes, label: str) -> Dataset:
    """The whole data set of a DICOM file's bytes, parsed by pydicom within the bounds :func:`decode_dicom`
    keeps: elements and sequence items counted first, a deflated data set inflated no further than its
    pixels need. Raises :class:`ImageReadError` naming ``label``."""
    with _corrupt_dicom(label):
        return _dcmread(_inflate_if_deflated(data, label), label)


def check_dicom_bytes(data: bytes, label: str) -> None:
    """Raise :class:`ImageReadError` naming ``label`` for the DICOM file ``data`` when pydicom's parse of it
    would pass the bounds of :func:`read_dicom_dataset`; for code that hands the bytes to pydicom itself."""
    with _corrupt_dicom(label):
        _count_elements(_inflate_if_deflated(data, label), label, stop_before_pixels=False)


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


def _dcmread(data: bytes, label: str, stop_before_pixels: bool = False, counted: bool = False):
    """pydicom's parse of ``data`` (not deflated), once its elements and items are counted within bounds
    (``counted``: the caller has just counted them, with the same ``stop_before_pixels``)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    if not counted:
        _count_elements(data, label, stop_before_pixels)
    try:
        return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=stop_before_pixels)
    except (InvalidDicomError, OSError, ValueError, KeyError, EOFError, AttributeError) as exc:
        raise ImageReadError(f"{label}: corrupt DICOM ({reason(exc)})") from None


def _count_elements(data: bytes, label: str, stop_before_pixels: bool) -> int | None:
    """:func:`~pneumoscan.data.dicom_scan.check_structure` on a DICOM file's bytes (not deflated)."""
    elements, start = _file_meta_elements(data, label)
    syntax = next((value for tag, _, value in elements if tag == 0x00020010), b"")
    return check_structure(data, start, syntax.rstrip(b"\0 ").decode("ascii", "replace"), label, stop_before_pixels)


def _decode(data: bytes, label: str) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    # The header alone first: the pixel count is checked before any pixel data is read or decompressed.
    header = _dcmread(data, label, stop_before_pixels=True)
    _check_dicom_pixels(header, label)
    ds = _dcmread(data, label)
    if "PixelData" not in ds:
        raise ImageReadError(f"{label}: DICOM has no pixel data (a report or structured document?)")
    pixels = _pixel_array(ds, label)
    if pixels.ndim == 3:  # RGB DICOM (secondary capture)
        return np.asarray(Image.fromarray(to_uint8(pixels)).convert("L"))
    try:
        # The modality transform (rescale slope / intercept) only where its values are used: the window
        # reads the stored values through a table (_windowed) without a whole-image copy.
        if "VOILUTSequence" in ds:
            values = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64)
            image = to_uint8(np.asarray(apply_voi_lut(values, ds, index=0)))
        elif "WindowCenter" in ds and "WindowWidth" in ds:
            image = _windowed(pixels, ds)
        else:
            image = to_uint8(apply_modality_lut(pixels, ds))  # in float32: no float64 copy of a large image
    except Exception as exc:
        raise ImageReadError(f"{label}: invalid DICOM value transforms ({reason(exc)})") from None
    if str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper() == "MONOCHROME1":
        image = 255 - image  # MONOCHROME1 stores bright as low values
    return image


def _windowed(pixels: np.ndarray, ds) -> np.ndarray:
    """The stored ``pixels`` through the modality transform and the first window of ``ds``, its output
    range scaled to 0..255. Integer pixels go through a table of their values (at most 65,536 entries),
    computed by the same pydicom calls: a large image then costs no float64 copies in pydicom's windowing
    (1.4 GB for 64 Mpx)."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    def transform(values: np.ndarray) -> np.ndarray:
        windowed = np.asarray(apply_voi_lut(np.asarray(apply_modality_lut(values, ds), dtype=np.float64), ds, index=0),
                              dtype=np.float64)
        # Scale by the window's output range, not the image's own: a window is an absolute
        # choice of contrast, and pixels outside it must saturate at 0 or 255.
        low, high = np.asarray(apply_voi_lut(np.array([-1e12, 1e12]), ds, index=0), dtype=np.float64)
        return scaled_to_uint8(windowed, float(low), 255.0 / max(float(high - low), 1e-9))

    if not np.issubdtype(pixels.dtype, np.integer) or pixels.itemsize > 2 or not pixels.size:
        return transform(pixels)
    low, high = int(pixels.min()), int(pixels.max())
    table = transform(np.arange(low, high + 1).astype(pixels.dtype))
    index = pixels.astype(np.int32)
    index -= low
    return table[index]


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


def _pixel_array(ds, label: str) -> np.ndarray:
    """``ds.pixel_array``, decoded from bytes whose own header was checked first, and checked again after."""
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is not None and syntax.is_encapsulated:
        _one_checked_frame(ds, str(syntax), label)
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for unsupported transfer syntaxes
        raise ImageReadError(_undecodable(syntax, exc, label)) from None
    rows, columns, samples = int(ds.Rows), int(ds.Columns), int(ds.get("SamplesPerPixel", 1) or 1)
    if pixels.shape != ((rows, columns) if samples == 1 else (rows, columns, samples)):
        raise ImageReadError(f"{label}: corrupt DICOM: the pixel data decodes to {pixels.shape}, the header says "
                             f"{rows} rows x {columns} columns x {samples} sample(s)")
    return pixels


def _one_checked_frame(ds, syntax: str, label: str) -> None:
    """Replace the encapsulated pixel data of ``ds`` by the one frame a decoder would decode, taken as
    pydicom's decoders take it (``get_frame``, with the Extended Offset Table), after checking the size
    that frame declares against the pixel limit and the header. The decoder is then handed those bytes
    and nothing else: no second fragment, offset table or JP2 box can make it decode another image than
    the one checked."""
    from pydicom.encaps import encapsulate, get_frame

    offsets = None
    if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
        offsets = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
        if len(offsets[0]) != len(offsets[1]):
            offsets = None  # pydicom's decoders ignore a table whose two halves disagree
    try:
        frame = get_frame(ds.PixelData, 0, number_of_frames=1, extended_offsets=offsets)
        checked = canonical_frame(frame, syntax)
    except MalformedFrame as exc:
        raise ImageReadError(f"{label}: corrupt DICOM ({exc})") from None
    except (ValueError, IndexError, KeyError, struct.error) as exc:
        raise ImageReadError(f"{label}: corrupt DICOM (no compressed frame in the pixel data: {reason(exc)})") from None
    if checked is None:
        return  # RLE: its segments declare no size; its decoder works from Rows and Columns
    data, header = checked
    values = header.width * header.height * max(header.components, 1)
    if values > MAX_PIXELS:
        raise ImageReadError(
            f"{label}: refused as a decompression bomb: the compressed frame declares {header.width}x{header.height} "
            f"x {header.components} component(s), over the limit of {MAX_PIXELS:,} values (set "
            "PNEUMOSCAN_MAX_PIXELS to raise it)")
    if (header.width, header.height) != (int(ds.Columns), int(ds.Rows)):
        raise ImageReadError(
            f"{label}: corrupt DICOM: the compressed frame declares {header.width}x{header.height} pixels, the header "
            f"{ds.Columns}x{ds.Rows} (Columns x Rows)")
    samples, bits = int(ds.get("SamplesPerPixel", 1) or 1), int(ds.get("BitsAllocated", 0) or 0)
    if header.components != samples or header.precision > bits:
        raise ImageReadError(
            f"{label}: corrupt DICOM: the compressed frame declares {header.components} component(s) of "
            f"{header.precision} bits, the header {samples} sample(s) of {bits} bits allocated")
    try:
        check_decoder_cost(data, header, syntax)
    except FrameBomb as exc:
        raise ImageReadError(f"{label}: refused as a decompression bomb: {exc}") from None
    except MalformedFrame as exc:
        raise ImageReadError(f"{label}: corrupt DICOM ({exc})") from None
    for keyword in ("ExtendedOffsetTable", "ExtendedOffsetTableLengths"):
        if keyword in ds:
            del ds[keyword]
    ds.PixelData = encapsulate([data])


def _undecodable(syntax, exc: Exception, label: str) -> str:
    """Why the pixel data cannot be decoded: a decoder missing from this installation, or a frame that
    the installed decoders refuse (malformed, or a variant they do not support)."""
    from pydicom.pixels import get_decoder

    try:
        available = get_decoder(syntax).is_available
    except (NotImplementedError, ValueError, TypeError):
        return f"{label}: DICOM pixel data in transfer syntax {syntax}, which pneumoscan cannot decode"
    if not available:
        return (f"{label}: cannot decode DICOM pixel data (transfer syntax {syntax}): its decoder is not installed; "
                "reinstall pneumoscan to get its decoders (pylibjpeg, pylibjpeg-libjpeg, pylibjpeg-openjpeg, pyjpegls)")
    return (f"{label}: corrupt DICOM: the compressed frame is malformed or of a kind the decoder does not "
            f"support (transfer syntax {syntax}: {reason(exc)})")


def read_dicom_header(stream: BinaryIO, label: str) -> tuple[Dataset, bool]:
    """(the data set before its pixels, whether pixel data follows it) of the DICOM file read from
    ``stream`` (at its start), parsed by pydicom once its elements and items are counted within bounds.
    At most ``MAX_DICOM_HEADER_BYTES`` of header are read; a deflated one is inflated no further (pydicom
    alone would inflate all of it, pixels and padding, even to read one element)."""
    data = stream.read(_HEAD_CHUNK)
    elements, start = _file_meta_elements(data, label)
    if _is_deflated(elements):
        body = zlib.decompressobj(-zlib.MAX_WBITS).decompress(data[start:] + stream.read(MAX_DICOM_HEADER_BYTES),
                                                              MAX_DICOM_HEADER_BYTES)
        data = _explicit_head(data, elements) + body
        pixels_at = _count_elements(data, label, stop_before_pixels=True)
    else:  # read on until the pixel data, the end of the file, or the limit
        while (pixels_at := _count_elements(data, label, stop_before_pixels=True)) is None \
                and len(data) < MAX_DICOM_HEADER_BYTES and (more := stream.read(len(data))):
            data += more
    return _dcmread(data, label, stop_before_pixels=True, counted=True), pixels_at is not None


def _is_deflated(elements: list[tuple[int, bytes, bytes]]) -> bool:
    syntax = next((value for tag, _, value in elements if tag == 0x00020010), b"")
    return syntax.rstrip(b"\0 ").decode("ascii", "replace") == _DEFLATED


def _explicit_head(data: bytes, elements: list[tuple[int, bytes, bytes]]) -> bytes:
    """Preamble, magic and file meta of a deflated file, re-labelled Explicit VR Little Endian."""
    meta = _encode_meta([(tag, vr, _uid_value(_EXPLICIT_LITTLE) if tag == 0x00020010 else value)
                         for tag, vr, value in elements])
    return data[:128] + b"DICM" + meta


def _inflate_if_deflated(data: bytes, label: str) -> bytes:
    """``data`` itself, or for the Deflated Explicit VR Little Endian transfer syntax the same file with
    its data set inflated (and marked Explicit VR Little Endian), inflated in bounded chunks.

    pydicom would inflate the whole data set at once: a 1 MB file can hold gigabytes of zeros. Here the
    header is inflated first (at most ``MAX_DICOM_HEADER_BYTES``), its pixel count checked, and the
    rest may only inflate to the size those pixels need.
    """
    elements, start = _file_meta_elements(data)
    if not _is_deflated(elements):
        return data
    head = _explicit_head(data, elements)
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



_MAX_META_ELEMENTS = 64  # PS3.10 defines 14


def _file_meta_elements(data: bytes, label: str = "DICOM") -> tuple[list[tuple[int, bytes, bytes]], int]:
    """The raw (tag, VR, value) elements of the file meta group (0002) and the offset where the data set
    starts. The group is always Explicit VR Little Endian (PS3.10 7.1) and holds a dozen elements, none a
    sequence: anything else is refused before pydicom parses it."""
    elements, offset = [], 132
    while offset + 8 <= len(data):
        group, element = struct.unpack_from("<HH", data, offset)
        if group != 0x0002:
            break
        vr = data[offset + 4: offset + 6]
        if vr in LONG_VRS:
            (length,) = struct.unpack_from("<I", data, offset + 8) if offset + 12 <= len(data) else (0,)
            value_at = offset + 12
        else:
            (length,) = struct.unpack_from("<H", data, offset + 6)
            value_at = offset + 8
        if vr == b"SQ" or length == 0xFFFFFFFF or len(elements) >= _MAX_META_ELEMENTS:
            raise ImageReadError(f"{label}: corrupt DICOM (the file meta group holds a sequence or over "
                                 f"{_MAX_META_ELEMENTS} elements)")
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
        if vr in LONG_VRS:
            body += tag_bytes + vr + b"\0\0" + struct.pack("<I", len(value)) + value
        else:
            body += tag_bytes + vr + struct.pack("<H", len(value)) + value
    return struct.pack("<HH", 2, 0) + b"UL" + struct.pack("<HI", 4, len(body)) + body


def _uid_value(uid: str) -> bytes:
    value = uid.encode("ascii")
    return value + b"\0" if len(value) % 2 else value  # UIDs are padded to even length with NUL
