"""DICOM identifiers are read from the header only, whatever the transfer syntax."""

from __future__ import annotations

import tracemalloc

from helpers.corpus import deflate_bomb, dicom_bytes
from pneumoscan.data.dicom_ids import read_dicom_identifiers


def test_a_deflate_bomb_gives_its_identifiers_without_being_inflated(tmp_path):
    bomb = deflate_bomb()  # about 1 MB inflating to 1 GiB behind the pixels
    path = tmp_path / "bomb.dcm"
    path.write_bytes(bomb)
    # The corpus files share a patient; each file gets its own SOP Instance UID.
    expected = read_dicom_identifiers(dicom_bytes())
    assert expected["patient_id"]
    tracemalloc.start()
    try:
        found = [read_dicom_identifiers(bomb), read_dicom_identifiers(path)]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    for ids in found:
        assert {k: v for k, v in ids.items() if k != "sop_instance_uid"} == {
            k: v for k, v in expected.items() if k != "sop_instance_uid"}
        assert ids["sop_instance_uid"].startswith("1.2.")
    assert peak < 64 * 2**20, f"reading identifiers took {peak / 2**20:.0f} MiB"
