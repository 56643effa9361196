"""Compressed DICOM frames are checked against the pixel limit and against Rows and Columns from their
own header (JPEG SOF, JPEG 2000 SIZ) before any decoder runs: a tiny frame can declare a huge image. The
frame checked is the frame decoded: taken as pydicom's decoders take it, and handed to them alone."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from PIL import Image
from pydicom.encaps import encapsulate

from helpers import bombs, chest_dicoms
from pneumoscan.data import read_image
from pneumoscan.data.codestream import FrameHeader, MalformedFrame, canonical_frame, jpeg_header
from pneumoscan.errors import ImageReadError

J2K_LOSSLESS, JPEG_BASELINE = "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.50"


def _pixels() -> np.ndarray:
    return (np.arange(64 * 64).reshape(64, 64) % 251).astype(np.uint8)


def _j2k(width: int = 64, height: int = 64) -> bytes:
    from openjpeg import encode

    frame = bytearray(encode(_pixels(), codec_format=0))  # a bare codestream (J2K, not JP2)
    siz = frame.find(b"\xff\x4f\xff\x51")
    struct.pack_into(">II", frame, siz + 8, width, height)  # Xsiz, Ysiz (offsets are 0)
    return bytes(frame)


def _jpeg(width: int = 64, height: int = 64) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(_pixels()).save(buffer, "JPEG", quality=90)
    frame = bytearray(buffer.getvalue())
    sof = frame.find(b"\xff\xc0")
    struct.pack_into(">HH", frame, sof + 5, height, width)
    return bytes(frame)


def _dicom(frame: bytes, syntax: str, rows: int = 64, columns: int = 64) -> bytes:
    ds = chest_dicoms.instance(chest_dicoms.study(), chest_dicoms.CR, "CR", 1, _pixels(), 8,
                               ViewPosition="PA", BodyPartExamined="CHEST")
    ds.Rows, ds.Columns = rows, columns
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    return chest_dicoms.encode(ds)


@pytest.fixture
def no_decoder(monkeypatch):
    """Any decoder run fails the test: the refusals must come from the headers alone."""
    import pydicom.dataset

    def decoded(self):
        raise AssertionError("the pixel data was decoded")

    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(decoded))


def test_the_frame_headers_are_read_without_decoding():
    frame = _j2k()
    assert canonical_frame(frame, J2K_LOSSLESS) == (frame, FrameHeader(64, 64, 1, 8))
    assert canonical_frame(_jpeg(300, 200), JPEG_BASELINE)[1] == FrameHeader(300, 200, 1, 8)
    with pytest.raises(MalformedFrame):
        canonical_frame(b"\x00" * 100, J2K_LOSSLESS)


def test_compressed_frames_that_match_their_header_decode():
    assert read_image(_dicom(_j2k(), J2K_LOSSLESS), size=32).shape == (32, 32)
    assert read_image(_dicom(_jpeg(), JPEG_BASELINE), size=32).shape == (32, 32)


@pytest.mark.parametrize("make, syntax, side", [(_j2k, J2K_LOSSLESS, 10000), (_jpeg, JPEG_BASELINE, 11000)],
                         ids=["jpeg-2000", "jpeg"])
def test_a_tiny_frame_declaring_a_huge_image_is_refused_before_decoding(make, syntax, side, no_decoder):
    frame, declared = make(side, side), f"{side}x{side}"
    assert len(frame) < 5000
    with pytest.raises(ImageReadError, match=f"decompression bomb: the compressed frame declares {declared}"):
        read_image(_dicom(frame, syntax), size=64)


@pytest.mark.parametrize("make, syntax, size", [(_j2k, J2K_LOSSLESS, (128, 64)), (_jpeg, JPEG_BASELINE, (64, 32))],
                         ids=["jpeg-2000", "jpeg"])
def test_a_frame_whose_size_differs_from_rows_and_columns_is_refused_before_decoding(make, syntax, size, no_decoder):
    frame = make(*size)
    with pytest.raises(ImageReadError, match="the compressed frame declares .* the header 64x64"):
        read_image(_dicom(frame, syntax), size=64)


def test_a_jpeg_frame_without_a_frame_header_is_refused(no_decoder):
    with pytest.raises(ImageReadError, match="no JPEG frame header"):
        read_image(_dicom(b"\xff\xd8\xff\xd9", JPEG_BASELINE), size=64)


@pytest.mark.parametrize("make", [bombs.jp2_uuid_bomb, bombs.offset_table_bomb], ids=["jp2-uuid-box", "offset-table"])
def test_the_size_checked_is_the_size_of_the_frame_the_decoder_gets(make, no_decoder):
    """A JP2 ``uuid`` box holding a 64 x 64 SIZ before the real codestream, or an Extended Offset Table
    naming a second fragment: the frame the decoder would decode declares 24000 x 24000."""
    data = make()
    assert len(data) < 5000
    with pytest.raises(ImageReadError, match="decompression bomb: the compressed frame declares 24000x24000"):
        read_image(data, size=64)


def test_the_decoder_decodes_the_frame_the_offset_table_names():
    honest = bombs.j2k_codestream(bombs.SIDE)
    garbage = b"\xff\x4f\xff\x51" + bytes(100)  # never decoded: the table names the second fragment
    offset = 8 + len(garbage)
    data = bombs._compressed([garbage, honest], NumberOfFrames=1, ExtendedOffsetTable=struct.pack("<Q", offset),
                             ExtendedOffsetTableLengths=struct.pack("<Q", len(honest)))
    assert np.array_equal(read_image(data), bombs._pixels())


def test_a_jp2_wrapped_frame_decodes_from_its_codestream_box():
    assert np.array_equal(read_image(bombs._compressed([bombs.jp2_uuid_bomb_frame(bombs.SIDE)])), bombs._pixels())


def test_a_malformed_frame_is_reported_as_malformed_not_as_a_missing_decoder():
    damaged = bytearray(bombs.j2k_codestream(bombs.SIDE))
    damaged[damaged.find(b"\xff\x52") + 5] = 0x7F  # a progression order that does not exist (T.800 A.6.1)
    with pytest.raises(ImageReadError) as caught:
        read_image(bombs._compressed([bytes(damaged)]), name="damaged.dcm")
    message = str(caught.value)
    assert message.startswith("damaged.dcm: corrupt DICOM: the compressed frame is malformed")
    assert "reinstall" not in message and "\n" not in message


def test_a_frame_with_another_component_count_than_the_header_is_refused(no_decoder):
    with pytest.raises(ImageReadError, match="declares 1 component.* the header 3 sample"):
        read_image(bombs._compressed([bombs.j2k_codestream(bombs.SIDE)], SamplesPerPixel=3,
                                     PhotometricInterpretation="RGB", PlanarConfiguration=0), size=64)


def test_a_hierarchical_or_extended_jpeg_header_gives_the_size_its_decoder_allocates():
    sof = b"\xff\xc0\x00\x0b\x08" + struct.pack(">HH", 64, 64) + b"\x01\x01\x11\x00"
    dhp = b"\xff\xde\x00\x0b\x08" + struct.pack(">HH", 30000, 30000) + b"\x01\x01\x11\x00"
    assert jpeg_header(b"\xff\xd8" + dhp + sof + b"\xff\xda") == FrameHeader(30000, 30000, 1, 8)
    sof55 = b"\xff\xf7\x00\x0b\x08" + struct.pack(">HH", 0, 0) + b"\x01\x01\x11\x00"
    lse = b"\xff\xf8\x00\x0c\x04\x04" + struct.pack(">II", 30000, 20000)  # ID 4: Wxy, then height and width
    assert jpeg_header(b"\xff\xd8" + sof55 + lse + b"\xff\xda") == FrameHeader(20000, 30000, 1, 8)
    with pytest.raises(MalformedFrame, match="declares 64x64 and 20000x30000"):
        jpeg_header(b"\xff\xd8" + sof + lse + b"\xff\xda")
    with pytest.raises(MalformedFrame, match="no marker at byte"):
        jpeg_header(b"\xff\xd8" + sof[:-1] + b"\x00\x00" + dhp)


def _j2k_with(side: int, tile: int | None = None, block_exponent: int | None = None) -> bytes:
    frame = bytearray(bombs.j2k_codestream(side))
    if tile is not None:
        struct.pack_into(">II", frame, 24, tile, tile)  # XTsiz, YTsiz
    if block_exponent is not None:
        cod = frame.find(b"\xff\x52")
        frame[cod + 10] = frame[cod + 11] = block_exponent - 2  # xcb, ycb
    return bombs._compressed([bytes(frame)], Rows=side, Columns=side)


@pytest.mark.parametrize("tile, block, declared", [(17, None, "58,081 tile"), (None, 2, "1 tile")],
                         ids=["17-px-tiles", "4-px-code-blocks"])
def test_a_codestream_of_countless_tiles_or_code_blocks_is_refused_before_decoding(tile, block, declared, no_decoder):
    """openjpeg allocates a structure per tile, precinct and code-block: 1.4 kB files like these took 0.7
    and 1.7 GB, within the pixel limit and with honest sizes."""
    side = 4096 if tile else 8000
    with pytest.raises(ImageReadError, match=f"decompression bomb: the JPEG 2000 codestream declares {declared}"):
        read_image(_j2k_with(side, tile, block), size=64)


def test_a_codestream_with_the_usual_code_blocks_is_not_refused():
    assert read_image(_j2k_with(bombs.SIDE, block_exponent=5), size=32).shape == (32, 32)  # 32 x 32 blocks
