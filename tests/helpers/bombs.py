"""Small DICOM files that cost gigabytes to a reader that believes the wrong header or parses every item.

Each is a chest radiograph's header (CR, PA, CHEST, 64 x 64) so that every entry point gets as far as
decoding it:

- ``jp2_uuid_bomb``: a JPEG 2000 frame in JP2 boxes, whose first box (``uuid``) holds a 64 x 64 SIZ
  marker, and whose codestream box (``jp2c``, the one openjpeg decodes) declares ``side`` x ``side``;
- ``offset_table_bomb``: two fragments, the first an honest 64 x 64 codestream, the second one declaring
  ``side`` x ``side``, and an Extended Offset Table naming the second as the only frame;
- ``code_block_bomb``: an honest 8000 x 8000 header (the pixel limit) whose codestream asks for 4 x 4
  code-blocks: openjpeg makes a structure for each of the 5 million;
- ``sequence_bomb``: ``items`` empty sequence items (8 bytes each on the wire, a Dataset each in pydicom);
- ``deflate_bomb`` (``helpers.corpus``): a 1 MB deflated data set inflating to 1 GiB, which pynetdicom's
  ``event.dataset`` would inflate whole.
"""

from __future__ import annotations

import struct

import numpy as np
from pydicom.encaps import encapsulate

from helpers import chest_dicoms
from helpers.corpus import deflate_bomb

J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
SIDE = 64


def _pixels() -> np.ndarray:
    rows = np.arange(SIDE, dtype=np.int32)
    return ((rows[:, None] * 3 + rows[None, :] * 2) % 256).astype(np.uint8)


def _dataset(pixels: bool = True):
    return chest_dicoms.instance(chest_dicoms.study(), chest_dicoms.CR, "CR", 1, _pixels() if pixels else None, 8,
                                 ViewPosition="PA", BodyPartExamined="CHEST")


def j2k_codestream(side: int = SIDE) -> bytes:
    """A 64 x 64 lossless JPEG 2000 codestream whose SIZ marker says ``side`` x ``side`` (one tile): openjpeg
    allocates the declared image, whatever the codestream holds."""
    from openjpeg import encode

    frame = bytearray(encode(_pixels(), codec_format=0))
    assert frame[:4] == b"\xff\x4f\xff\x51"
    struct.pack_into(">II", frame, 8, side, side)  # Xsiz, Ysiz (XOsiz, YOsiz stay 0)
    struct.pack_into(">II", frame, 24, side, side)  # XTsiz, YTsiz: one tile of the whole image
    return bytes(frame)


def _box(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", 8 + len(body)) + kind + body


def jp2_uuid_bomb_frame(side: int) -> bytes:
    header = _box(b"ihdr", struct.pack(">IIHBBBB", side, side, 1, 7, 7, 0, 0)) \
        + _box(b"colr", struct.pack(">BBBI", 1, 0, 0, 17))  # enumerated colour space: greyscale
    return (b"\x00\x00\x00\x0cjP  \r\n\x87\n" + _box(b"ftyp", b"jp2 \0\0\0\0jp2 ") + _box(b"jp2h", header)
            + _box(b"uuid", bytes(16) + j2k_codestream(SIDE)) + _box(b"jp2c", j2k_codestream(side)))


def _compressed(fragments: list[bytes], **attributes) -> bytes:
    ds = _dataset()
    ds.file_meta.TransferSyntaxUID = J2K_LOSSLESS
    ds.PixelData = encapsulate(fragments, has_bot=False)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    for key, value in attributes.items():
        setattr(ds, key, value)
    return chest_dicoms.encode(ds)


def jp2_uuid_bomb(side: int = 24000) -> bytes:
    return _compressed([jp2_uuid_bomb_frame(side)])


def offset_table_bomb(side: int = 24000) -> bytes:
    honest, bomb = j2k_codestream(SIDE), j2k_codestream(side)
    # Offsets count from the first fragment's item tag; the second follows the first's 8-byte item header.
    offset = 8 + len(honest) + len(honest) % 2
    return _compressed([honest, bomb], NumberOfFrames=1, ExtendedOffsetTable=struct.pack("<Q", offset),
                       ExtendedOffsetTableLengths=struct.pack("<Q", len(bomb)))


def code_block_bomb(side: int = 8000) -> bytes:
    frame = bytearray(j2k_codestream(side))
    cod = frame.find(b"\xff\x52")  # COD: Lcod, Scod, SGcod (4 bytes), levels, then the code-block exponents
    frame[cod + 10] = frame[cod + 11] = 0  # 2 ** (0 + 2) = 4 samples
    return _compressed([bytes(frame)], Rows=side, Columns=side)


_SEQUENCE = b"\x40\x00\x75\x02SQ\0\0\xff\xff\xff\xff"  # (0040,0275) Request Attributes Sequence, undefined length
_EMPTY_ITEM = b"\xfe\xff\x00\xe0\0\0\0\0"
_SEQUENCE_END = b"\xfe\xff\xdd\xe0\0\0\0\0"


def sequence_bomb(items: int = 1_000_000) -> bytes:
    """A 64 x 64 radiograph with a sequence of ``items`` empty items before its pixel data (8 MB a million)."""
    data = chest_dicoms.encode(_dataset())
    pixel_data = data.index(b"\xe0\x7f\x10\x00")
    return data[:pixel_data] + _SEQUENCE + _EMPTY_ITEM * items + _SEQUENCE_END + data[pixel_data:]


def honest_j2k() -> bytes:
    """The same radiograph as the bombs, in a conformant lossless JPEG 2000 frame: it must decode."""
    return _compressed([j2k_codestream(SIDE)])


BOMBS = {"jp2-uuid": jp2_uuid_bomb, "offset-table": offset_table_bomb, "code-blocks": code_block_bomb,
         "sequence": sequence_bomb, "deflate": deflate_bomb}
