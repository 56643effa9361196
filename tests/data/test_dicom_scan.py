"""DICOM elements and sequence items are counted before pydicom parses them: past the limit (lowered here,
so that a regression costs megabytes, not gigabytes) a file is refused by every reader of DICOM headers,
in every encoding pydicom reads a sequence from."""

from __future__ import annotations

import io
import struct

import pydicom
import pytest

from helpers import bombs, chest_dicoms
from pneumoscan.data import dicom_scan, read_image
from pneumoscan.data.dicom_ids import read_dicom_identifiers
from pneumoscan.data.dicom_image import read_dicom_dataset, read_dicom_header
from pneumoscan.errors import ImageReadError
from pneumoscan.inference.scope import file_reason

LIMIT = 500


@pytest.fixture(autouse=True)
def low_limit(monkeypatch):
    monkeypatch.setattr(dicom_scan, "MAX_DICOM_ELEMENTS", LIMIT)


def _with_pixels_after(element: bytes, syntax: str = "1.2.840.10008.1.2.1") -> bytes:
    """A 64 x 64 chest radiograph in ``syntax`` with ``element`` (encoded bytes) before its pixel data."""
    ds = bombs._dataset()
    ds.file_meta.TransferSyntaxUID = syntax
    data = chest_dicoms.encode(ds) if syntax != "1.2.840.10008.1.2.2" else _big_endian(ds)
    pixel_data = data.index(b"\xe0\x7f\x10\x00" if syntax != "1.2.840.10008.1.2.2" else b"\x7f\xe0\x00\x10")
    return data[:pixel_data] + element + data[pixel_data:]


def _big_endian(ds) -> bytes:
    buffer = io.BytesIO()
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.2"
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def _explicit_sequence(items: int, undefined: bool = True, vr: bytes = b"SQ") -> bytes:
    body = bombs._EMPTY_ITEM * items
    if undefined:
        return b"\x40\x00\x75\x02" + vr + b"\0\0\xff\xff\xff\xff" + body + bombs._SEQUENCE_END
    return b"\x40\x00\x75\x02" + vr + b"\0\0" + struct.pack("<I", len(body)) + body


def _implicit_sequence(items: int) -> bytes:
    return b"\x40\x00\x75\x02\xff\xff\xff\xff" + bombs._EMPTY_ITEM * items + bombs._SEQUENCE_END


def _nested(depth: int) -> bytes:
    """``depth`` sequences, each the one element of its parent's one item (all of undefined length)."""
    element = b""
    for _ in range(depth):
        item = b"\xfe\xff\x00\xe0\xff\xff\xff\xff" + element + b"\xfe\xff\x0d\xe0\0\0\0\0"
        element = b"\x40\x00\x75\x02SQ\0\0\xff\xff\xff\xff" + item + bombs._SEQUENCE_END
    return element


BOMBS = {
    "explicit, undefined length": _with_pixels_after(_explicit_sequence(2 * LIMIT)),
    "explicit, defined length": _with_pixels_after(_explicit_sequence(2 * LIMIT, undefined=False)),
    "UN of undefined length": _with_pixels_after(_explicit_sequence(2 * LIMIT, vr=b"UN")),
    "implicit VR": _with_pixels_after(_implicit_sequence(2 * LIMIT), "1.2.840.10008.1.2"),
    "big endian": _with_pixels_after(
        b"\x00\x40\x02\x75SQ\0\0\xff\xff\xff\xff" + b"\xff\xfe\xe0\x00\0\0\0\0" * (2 * LIMIT) + b"\xff\xfe\xe0\xdd\0\0\0\0",
        "1.2.840.10008.1.2.2"),
}


@pytest.mark.parametrize("data", BOMBS.values(), ids=BOMBS.keys())
def test_a_sequence_of_more_items_than_the_limit_is_refused_by_every_reader(data):
    expected = f"over {LIMIT:,} elements and sequence items"
    with pytest.raises(ImageReadError, match=expected):
        read_image(data, 64, name="bomb.dcm")
    with pytest.raises(ImageReadError, match=expected):
        read_dicom_header(io.BytesIO(data), "bomb.dcm")
    with pytest.raises(ImageReadError, match=expected):
        read_dicom_dataset(data, "bomb.dcm")
    assert set(read_dicom_identifiers(data).values()) == {None}
    assert file_reason(data) is None  # the scope gate leaves the reason to decoding


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.2"])
def test_a_radiograph_with_sequences_under_the_limit_decodes(syntax):
    extra = {"1.2.840.10008.1.2.1": _nested(8) + _explicit_sequence(LIMIT // 2),
             "1.2.840.10008.1.2": _implicit_sequence(LIMIT // 2), "1.2.840.10008.1.2.2": b""}[syntax]
    data = _with_pixels_after(extra, syntax)
    assert read_image(data).shape == (bombs.SIDE, bombs.SIDE)
    assert read_dicom_identifiers(data)["patient_id"] == "PAT-0001"


def test_sequences_nested_deeper_than_the_limit_are_refused():
    with pytest.raises(ImageReadError, match=f"nested deeper than {dicom_scan.MAX_DICOM_DEPTH} levels"):
        read_image(_with_pixels_after(_nested(dicom_scan.MAX_DICOM_DEPTH + 1)), name="deep.dcm")


def test_a_sequence_in_the_file_meta_group_is_refused():
    data = chest_dicoms.encode(bombs._dataset())
    meta_end = 144 + struct.unpack_from("<I", data, 140)[0]
    bomb = data[:meta_end] + b"\x02\x00\x00\x01SQ\0\0\xff\xff\xff\xff" + bombs._EMPTY_ITEM * 10 + bombs._SEQUENCE_END \
        + data[meta_end:]
    with pytest.raises(ImageReadError, match="file meta group holds a sequence"):
        read_image(bomb, name="meta.dcm")
