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

import numpy as np
from PIL import Image

from pneumoscan.data.pixels import MAX_PIXELS, to_uint8
from pneumoscan.errors import ImageReadError, reason

# Everything in a DICOM data set but its pixels (patient, study, overlays, an icon) stays far below this.
# A deflated data set may inflate to its pixels' size plus this much, never more.
MAX_DICOM_HEADER_BYTES = 8 * 1024 * 1024
_DEFLATED = "1.2.840.10008.1.2.1.99"
_EXPLICIT_LITTLE = "1.2.840.10008.1.2.1"
_INFLATE_CHUNK = 1024 * 1024


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


def _decode(data: bytes, label: str) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    # The header alone first: the pixel count is checked before any pixel data is read or decompressed.
    header = _dcmread(data, label, stop_before_pixels=True)
    _check_dicom_pixels(header, label)
    ds = _dcmread(data, label)
    if "PixelData" not in ds:
        raise ImageReadError(f"{label}: DICOM has no pixel data (a report or structured document?)")
    _check_codestream(ds, label)
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for unsupported transfer syntaxes
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
        raise ImageReadError(
            f"{label}: cannot decode DICOM pixel data (transfer syntax {syntax}: {reason(exc)}); "
            "reinstall pneumoscan to get its decoders (pylibjpeg, pylibjpeg-libjpeg, pylibjpeg-openjpeg, pyjpegls)"
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


# The JPEG start-of-frame markers (ITU T.81 B.1.1.3; 0xC4, 0xC8 and 0xCC are not frames) and JPEG-LS's
# SOF55 (0xF7); all say height and width at the same offsets.
_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7})
_J2K_SIZ = b"\xff\x4f\xff\x51"  # SOC then SIZ: a JPEG 2000 codestream's first two markers
# JPEG (baseline, extended, lossless), JPEG-LS, JPEG 2000 and HTJ2K: a frame of these has a header.
_HEADERED_SYNTAXES = frozenset({f"1.2.840.10008.1.2.4.{n}" for n in (50, 51, 57, 70, 80, 81, 90, 91, 92, 93, 201, 202, 203)})


def codestream_size(frame: bytes) -> tuple[int, int, int] | None:
    """(width, height, components) that a JPEG, JPEG-LS or JPEG 2000 frame declares in its own header
    (SOF / SIZ marker), read without decoding anything; None when ``frame`` holds none of them."""
    if frame[:2] == b"\xff\xd8":  # JPEG and JPEG-LS: walk the marker segments up to the frame header
        offset = 2
        while offset + 4 <= len(frame):
            if frame[offset] != 0xFF:
                return None
            marker = frame[offset + 1]
            if marker == 0xFF:  # fill byte
                offset += 1
                continue
            if 0xD0 <= marker <= 0xD9 or marker == 0x01:  # markers without a length
                offset += 2
                continue
            (length,) = struct.unpack_from(">H", frame, offset + 2)
            if marker in _SOF_MARKERS:
                if offset + 10 > len(frame):
                    return None
                height, width = struct.unpack_from(">HH", frame, offset + 5)
                return width, height, frame[offset + 9]
            offset += 2 + length
        return None
    start = frame.find(_J2K_SIZ, 0, 4096)  # a bare codestream, or one in JP2 boxes
    if start < 0 or start + 42 > len(frame):
        return None
    xsiz, ysiz, xosiz, yosiz = struct.unpack_from(">IIII", frame, start + 8)
    (components,) = struct.unpack_from(">H", frame, start + 40)
    return xsiz - xosiz, ysiz - yosiz, components


def _check_codestream(ds, label: str) -> None:
    """Refuse, before any decoder runs, a compressed frame whose own header declares more pixels than
    the limit or another size than Rows and Columns: a decoder allocates what the codestream says, and
    a 1 kB JPEG 2000 frame can say 10000 x 10000."""
    from pydicom.encaps import generate_frames

    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is None or not syntax.is_encapsulated or syntax == "1.2.840.10008.1.2.5":  # RLE: no header
        return
    try:
        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    except (StopIteration, ValueError) as exc:
        raise ImageReadError(f"{label}: corrupt DICOM (no compressed frame in the pixel data: {reason(exc)})") from None
    size = codestream_size(frame)
    if size is None:
        if syntax in _HEADERED_SYNTAXES:
            raise ImageReadError(f"{label}: corrupt DICOM (the compressed frame has no JPEG frame header)")
        return  # another compression: its decoder works from Rows and Columns
    width, height, components = size
    if width * height * max(components, 1) > MAX_PIXELS:
        raise ImageReadError(
            f"{label}: refused as a decompression bomb: the compressed frame declares {width}x{height} x "
            f"{components} component(s), over the limit of {MAX_PIXELS:,} values (set PNEUMOSCAN_MAX_PIXELS "
            "to raise it)")
    if (width, height) != (int(ds.Columns), int(ds.Rows)):
        raise ImageReadError(
            f"{label}: corrupt DICOM: the compressed frame declares {width}x{height} pixels, the header "
            f"{ds.Columns}x{ds.Rows} (Columns x Rows)")


def is_deflated_dicom(data: bytes) -> bool:
    """Whether the file meta of these DICOM bytes (its first kilobytes suffice) names the deflated syntax."""
    return _is_deflated(_file_meta_elements(data)[0])


def read_dicom_header(data: bytes, label: str):
    """The data set before its pixels; a deflated one is inflated to at most ``MAX_DICOM_HEADER_BYTES``
    (pydicom alone would inflate all of it, pixels and padding, even to read one element)."""
    elements, start = _file_meta_elements(data)
    if not _is_deflated(elements):
        return _dcmread(data, label, stop_before_pixels=True)
    body = zlib.decompressobj(-zlib.MAX_WBITS).decompress(data[start:], MAX_DICOM_HEADER_BYTES)
    return _dcmread(_explicit_head(data, elements) + body, label, stop_before_pixels=True)


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
