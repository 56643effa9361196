"""What a compressed DICOM frame declares in its own header, read the way its decoder reads it.

A decoder allocates the image its codestream declares, whatever the DICOM header says: a 2 kB JPEG 2000
frame can declare 24000 x 24000. :func:`canonical_frame` gives the exact bytes to hand to the decoder
(a bare codestream: JP2 boxes are unwrapped) and the size that those bytes declare, so the size checked
is the size decoded. Nothing here decodes pixels.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

# The JPEG start-of-frame markers (ITU T.81 B.1.1.3; 0xC4, 0xC8 and 0xCC are not frames), DHP (0xDE:
# a hierarchical image's whole size, read before its frames) and JPEG-LS's SOF55 (0xF7); all say
# precision, height, width and components at the same offsets.
_FRAME_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF,
                            0xDE, 0xF7})
_SOS, _LSE = 0xDA, 0xF8
_SOC_SIZ = b"\xff\x4f\xff\x51"  # a JPEG 2000 codestream's first two markers, in this order (T.800 A.4)
_JP2_SIGNATURES = (b"\x00\x00\x00\x0cjP  \r\n\x87\n", b"\r\n\x87\n")  # what openjpeg takes for JP2


@dataclass(frozen=True)
class FrameHeader:
    """What a codestream declares: the decoded image is ``width`` x ``height`` x ``components`` values of
    at most ``precision`` bits."""

    width: int
    height: int
    components: int
    precision: int


class MalformedFrame(ValueError):
    """The frame's header cannot be read; the message says what is wrong."""


class FrameBomb(MalformedFrame):
    """The frame's header declares a structure that would cost the decoder far more than its pixels."""


# openjpeg allocates a structure (a few hundred bytes) for each precinct and code-block of every tile: a
# 1 kB codestream of 4 x 4 code-blocks on 8000 x 8000 pixels took 1.7 GB. Encoders use 32 x 32 or 64 x 64
# code-blocks and large precincts: 64 Mpx then needs under 100,000.
MAX_J2K_BLOCKS = 500_000


def jpeg_header(frame: bytes) -> FrameHeader:
    """The header of a JPEG or JPEG-LS frame: its markers are walked from SOI to the first scan, as
    libjpeg and CharLS read them (a segment must be followed by the next marker; anything else is
    refused). The frame size is the first SOF or DHP; a JPEG-LS size extension (LSE, ID 4) must agree."""
    if frame[:2] != b"\xff\xd8":
        raise MalformedFrame("the compressed frame does not start with a JPEG SOI marker")
    offset, found, oversize = 2, None, None
    while offset + 4 <= len(frame):
        if frame[offset] != 0xFF:
            raise MalformedFrame(f"the JPEG frame has no marker at byte {offset}")
        marker = frame[offset + 1]
        if marker == 0xFF:  # fill byte
            offset += 1
            continue
        if 0xD0 <= marker <= 0xD8 or marker == 0x01:  # markers without a length
            offset += 2
            continue
        if marker in (_SOS, 0xD9):
            break
        (length,) = struct.unpack_from(">H", frame, offset + 2)
        segment = frame[offset + 4: offset + 2 + length]
        if length < 2 or len(segment) != length - 2:
            raise MalformedFrame(f"the JPEG frame's marker segment at byte {offset} is truncated")
        if marker in _FRAME_MARKERS and found is None:
            if len(segment) < 6:
                raise MalformedFrame("the JPEG frame header is truncated")
            precision, height, width, components = struct.unpack_from(">BHHB", segment)
            found = FrameHeader(width, height, components, precision)
        elif marker == _LSE and segment[:1] == b"\x04":  # JPEG-LS oversize image dimension (T.870 C.2.4.1.4)
            size = segment[1] if len(segment) > 1 else 0
            if size not in (2, 3, 4) or len(segment) < 2 + 2 * size:
                raise MalformedFrame("the JPEG-LS size extension (LSE) is malformed")
            oversize = (int.from_bytes(segment[2 + size: 2 + 2 * size], "big"),
                        int.from_bytes(segment[2: 2 + size], "big"))  # (width, height)
        offset += 2 + length
    if found is None:
        raise MalformedFrame("the compressed frame has no JPEG frame header before its first scan")
    if oversize is not None and oversize != (found.width, found.height):
        if found.width and found.height:  # the extension may only give the size SOF55 leaves at 0
            raise MalformedFrame(f"the JPEG-LS frame declares {found.width}x{found.height} and "
                                 f"{oversize[0]}x{oversize[1]}")
        found = FrameHeader(*oversize, found.components, found.precision)
    return found


def j2k_codestream(frame: bytes) -> bytes:
    """The bare JPEG 2000 codestream of ``frame``: itself, or for a JP2 file (not conformant in DICOM, but
    accepted by openjpeg) the contents of its first ``jp2c`` box."""
    if frame[:4] == _SOC_SIZ:
        return frame
    if not frame.startswith(_JP2_SIGNATURES):
        raise MalformedFrame("the compressed frame is neither a JPEG 2000 codestream nor a JP2 file")
    offset = 0
    while offset + 8 <= len(frame):
        length, kind = struct.unpack_from(">I4s", frame, offset)
        start = offset + 8
        if length == 1:  # a 64-bit length follows the type
            if offset + 16 > len(frame):
                break
            (length,) = struct.unpack_from(">Q", frame, offset + 8)
            start = offset + 16
        elif length == 0:  # the last box: runs to the end
            length = len(frame) - offset
        if length < start - offset:
            break
        if kind == b"jp2c":
            return frame[start: offset + length]
        offset += length
    raise MalformedFrame("the JP2 file in the compressed frame has no codestream box (jp2c)")


def j2k_header(codestream: bytes) -> FrameHeader:
    """The image a bare JPEG 2000 codestream declares in its SIZ marker, which must follow SOC (T.800 A.5.1)."""
    if codestream[:4] != _SOC_SIZ or len(codestream) < 42:
        raise MalformedFrame("the JPEG 2000 codestream does not start with SOC and SIZ markers")
    xsiz, ysiz, xosiz, yosiz = struct.unpack_from(">IIII", codestream, 8)
    (components,) = struct.unpack_from(">H", codestream, 40)
    if len(codestream) < 42 + 3 * components or xosiz >= xsiz or yosiz >= ysiz:
        raise MalformedFrame("the JPEG 2000 SIZ marker is malformed")
    precision = max((codestream[42 + 3 * i] & 0x7F) + 1 for i in range(components)) if components else 0
    return FrameHeader(xsiz - xosiz, ysiz - yosiz, components, precision)


def check_decoder_cost(frame: bytes, header: FrameHeader, syntax: str) -> None:
    """Raise :class:`FrameBomb` when the decoder would allocate far more for ``frame`` (from
    :func:`canonical_frame`) than its pixels: a JPEG 2000 codestream of countless tiles, precincts or
    code-blocks."""
    if syntax not in JPEG_2000_SYNTAXES:
        return
    xsiz, ysiz, xosiz, yosiz, xtsiz, ytsiz, xtosiz, ytosiz = struct.unpack_from(">IIIIIIII", frame, 8)
    if not xtsiz or not ytsiz or xtosiz > xosiz or ytosiz > yosiz:
        raise MalformedFrame("the JPEG 2000 SIZ marker is malformed")
    tiles = -(-(xsiz - xtosiz) // xtsiz) * -(-(ysiz - ytosiz) // ytsiz)
    styles = _coding_styles(frame, header.components)
    blocks = tiles * header.components * 33 + max((_j2k_blocks(header, style) for style in styles), default=0)
    if blocks > MAX_J2K_BLOCKS:
        raise FrameBomb(f"the JPEG 2000 codestream declares {tiles:,} tile(s) and about {blocks:,} precincts and "
                        f"code-blocks, over the limit of {MAX_J2K_BLOCKS:,} (openjpeg allocates each)")


def _coding_styles(codestream: bytes, components: int):
    """(levels, code-block width and height exponents, precinct exponents per resolution) of every COD and
    COC marker, in the main header and every tile-part header (T.800 A.4, A.6.1, A.6.2)."""
    pos, tile_part = 2, 0
    while pos + 4 <= len(codestream):
        if codestream[pos] != 0xFF:
            raise MalformedFrame(f"the JPEG 2000 codestream has no marker at byte {pos}")
        marker = codestream[pos + 1]
        if marker == 0xD9:  # EOC
            return
        if marker == 0x93:  # SOD: the tile-part's data follows; Psot says where the next one starts
            (psot,) = struct.unpack_from(">I", codestream, tile_part + 6)
            if psot == 0 or tile_part + psot <= pos:
                return
            pos = tile_part + psot
            continue
        (length,) = struct.unpack_from(">H", codestream, pos + 2)
        segment = codestream[pos + 4: pos + 2 + length]
        if marker == 0x90:  # SOT
            tile_part = pos
        elif marker in (0x52, 0x53):  # COD, COC: Scod | Ccoc Scoc, then SPcod (SGcod comes first in COD)
            start = 5 if marker == 0x52 else (2 if components < 257 else 3)
            style = segment[0] if marker == 0x52 else segment[start - 1]
            if len(segment) < start + 3:
                raise MalformedFrame("the JPEG 2000 coding style marker is truncated")
            levels, xcb, ycb = segment[start], segment[start + 1], segment[start + 2]
            precincts = segment[start + 5: start + 6 + levels] if style & 1 else b""
            yield levels, xcb + 2, ycb + 2, [(b & 0x0F, b >> 4) for b in precincts]
        pos += 2 + length


def _j2k_blocks(header: FrameHeader, style) -> int:
    """About how many precincts and code-blocks openjpeg makes for the image with this coding style: per
    resolution, its size over the precinct size, plus its size over the code-block size."""
    levels, xcb, ycb, precincts = style
    total = 0
    for r in range(min(levels, 32) + 1):
        scale = 2 ** (min(levels, 32) - r)
        width, height = -(-header.width // scale), -(-header.height // scale)
        ppx, ppy = precincts[r] if r < len(precincts) else (15, 15)
        cbx, cby = min(xcb, ppx - (r > 0)), min(ycb, ppy - (r > 0))
        total += -(-width // 2**ppx) * -(-height // 2**ppy) + -(-width // 2 ** max(cbx, 0)) * -(-height // 2 ** max(cby, 0))
    return total * max(header.components, 1)


def canonical_frame(frame: bytes, syntax: str) -> tuple[bytes, FrameHeader] | None:
    """(the bytes to decode, what they declare) for a frame of the encapsulated transfer syntax ``syntax``;
    None for RLE, whose segments declare no size (its decoder works from Rows and Columns)."""
    family = JPEG_2000_SYNTAXES if syntax in JPEG_2000_SYNTAXES else JPEG_SYNTAXES if syntax in JPEG_SYNTAXES else None
    if family is JPEG_2000_SYNTAXES:
        codestream = j2k_codestream(frame)
        return codestream, j2k_header(codestream)
    if family is JPEG_SYNTAXES:
        return frame, jpeg_header(frame)
    if syntax == "1.2.840.10008.1.2.5":
        return None
    raise MalformedFrame(f"compressed pixel data in transfer syntax {syntax}, which pneumoscan does not decode")


# JPEG (baseline, extended, lossless) and JPEG-LS; JPEG 2000 and HTJ2K.
JPEG_SYNTAXES = frozenset({f"1.2.840.10008.1.2.4.{n}" for n in (50, 51, 57, 70, 80, 81)})
JPEG_2000_SYNTAXES = frozenset({f"1.2.840.10008.1.2.4.{n}" for n in (90, 91, 92, 93, 201, 202, 203)})
