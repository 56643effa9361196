"""Count a DICOM data set's elements and sequence items before pydicom parses it.

pydicom makes a Dataset of every sequence item (about 1.3 kB each, of an 8-byte item on the wire) and
parses a sequence of undefined length as soon as it reads it, even for ``stop_before_pixels`` or
``specific_tags``: an 8 MB file of a million empty items costs over a gigabyte and minutes. It has no
limit of its own, so :func:`check_structure` walks the encoded bytes first, as pydicom will read them,
and refuses the file once the elements and items it would create pass :data:`MAX_DICOM_ELEMENTS` or its
sequences nest deeper than :data:`MAX_DICOM_DEPTH`. It never rejects a layout it does not understand:
it only counts (anything pydicom cannot parse, pydicom reports).
"""

from __future__ import annotations

import os
import struct

from pneumoscan.errors import ImageReadError

# A radiograph has a few hundred elements; a vendor's private sequences a few thousand more. 20,000 is
# about 30 MB in pydicom.
MAX_DICOM_ELEMENTS = int(os.environ.get("PNEUMOSCAN_MAX_DICOM_ELEMENTS", 20_000))
MAX_DICOM_DEPTH = 32  # structured reports nest a dozen levels; nothing real comes near this

_ITEM_END, _SEQUENCE_END = 0xFFFEE00D, 0xFFFEE0DD
_PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_IMPLICIT = "1.2.840.10008.1.2"
_BIG_ENDIAN = "1.2.840.10008.1.2.2"


def check_structure(data: bytes, start: int, syntax: str, label: str, stop_before_pixels: bool = False) -> int | None:
    """Raise :class:`ImageReadError` naming ``label`` when the data set of ``data`` (a DICOM file's bytes,
    its data set beginning at ``start`` in the transfer syntax ``syntax``, not deflated) holds more than
    :data:`MAX_DICOM_ELEMENTS` elements and sequence items, or sequences nested deeper than
    :data:`MAX_DICOM_DEPTH`. With ``stop_before_pixels``, counts up to the pixel data and returns where
    its element starts (None when ``data`` ends before it)."""
    walk = _Walk(data, syntax != _BIG_ENDIAN, label, stop_before_pixels)
    walk.dataset(start, len(data), syntax == _IMPLICIT, 0)
    return walk.pixels_at


class _Walk:
    def __init__(self, data: bytes, little: bool, label: str, stop_before_pixels: bool) -> None:
        self.data, self.label, self.stop_before_pixels = data, label, stop_before_pixels
        order = "<" if little else ">"
        self.tag_length = struct.Struct(order + "HHI")
        self.short_length, self.long_length = struct.Struct(order + "H"), struct.Struct(order + "I")
        self.delimiter = struct.pack(order + "HH", 0xFFFE, 0xE0DD)
        self.item_tag = struct.pack(order + "HH", 0xFFFE, 0xE000)
        self.count = 0
        self.pixels_at: int | None = None

    def _tick(self) -> None:
        self.count += 1
        if self.count > MAX_DICOM_ELEMENTS:
            raise ImageReadError(
                f"{self.label}: refused: the DICOM data set holds over {MAX_DICOM_ELEMENTS:,} elements and sequence "
                "items (a radiograph has a few hundred; set PNEUMOSCAN_MAX_DICOM_ELEMENTS to raise the limit)")

    def dataset(self, pos: int, end: int, implicit: bool, depth: int) -> int:
        """Walk the elements from ``pos`` to ``end`` or an item delimiter; returns where it stopped."""
        data = self.data
        end = min(end, len(data))
        if pos + 6 <= end and not (implicit and depth):  # pydicom's guess (_is_implicit_vr), per data set
            implicit = not (0x40 < data[pos + 4] < 0x5B and 0x40 < data[pos + 5] < 0x5B)
        while pos + 8 <= end:
            group, element, length = self.tag_length.unpack_from(data, pos)
            tag = group << 16 | element
            if tag == _ITEM_END:
                return pos + 8
            if tag in _PIXEL_TAGS and self.stop_before_pixels and depth == 0:
                self.pixels_at = pos
                return pos
            self._tick()
            vr = None if implicit else data[pos + 4: pos + 6]
            value = pos + 8
            if vr in LONG_VRS:
                (length,) = self.long_length.unpack_from(data, pos + 8) if pos + 12 <= end else (0,)
                value = pos + 12
            elif vr is not None:
                (length,) = self.short_length.unpack_from(data, pos + 6)
            if length == 0xFFFFFFFF:
                pos = self._undefined_length(tag, vr, value, implicit, depth)
                continue
            if self._holds_items(tag, vr, value, length):
                self.sequence(value, value + length, implicit or vr == b"UN", depth + 1)
            pos = value + length
        return end

    def _holds_items(self, tag: int, vr: bytes | None, value: int, length: int) -> bool:
        """Whether pydicom may read this defined-length value as a sequence (when it is accessed): SQ, or
        any value that starts with an item (implicit VR, or UN, with a dictionary or private VR of SQ)."""
        if vr == b"SQ":
            return True
        if tag in _PIXEL_TAGS or (vr is not None and vr != b"UN") or length < 8:
            return False
        return self.data[value: value + 4] == self.item_tag

    def _undefined_length(self, tag: int, vr: bytes | None, value: int, implicit: bool, depth: int) -> int:
        """As pydicom: a sequence (SQ, UN, or an implicit VR element of items) is read item by item; any
        other value (encapsulated pixel data) runs to the next sequence delimiter."""
        if tag not in _PIXEL_TAGS and (vr in (b"SQ", b"UN") or (vr is None and self.data[value: value + 4] == self.item_tag)):
            return self.sequence(value, len(self.data), implicit or vr == b"UN", depth + 1)
        found = self.data.find(self.delimiter, value)
        return len(self.data) if found < 0 else found + 8

    def sequence(self, pos: int, end: int, implicit: bool, depth: int) -> int:
        """Walk the items from ``pos`` to ``end`` or the sequence delimiter. Like pydicom, every 8-byte
        header there is an item (a Dataset), whatever its tag."""
        if depth > MAX_DICOM_DEPTH:
            raise ImageReadError(f"{self.label}: refused: DICOM sequences nested deeper than {MAX_DICOM_DEPTH} levels")
        data = self.data
        end = min(end, len(data))
        while pos + 8 <= end:
            group, element, length = self.tag_length.unpack_from(data, pos)
            if group << 16 | element == _SEQUENCE_END:
                return pos + 8
            self._tick()
            if length == 0xFFFFFFFF:
                pos = self.dataset(pos + 8, len(data), implicit, depth)
            else:
                self.dataset(pos + 8, pos + 8 + length, implicit, depth)
                pos += 8 + length
        return end
