"""validate_dataset and inspect_dataset on a dataset with planted bad files and planted leakage."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from helpers.images import png_header_only, save, textured, truncated_jpeg
from pneumoscan.data.inspect import format_table, inspect_dataset
from pneumoscan.data.validate import validate_dataset
from pneumoscan.provenance import DISCLAIMER

BAD = {
    "train/NORMAL/IM-0900-0001.jpeg": "empty file",
    "train/NORMAL/IM-0901-0001.jpeg": "truncated",
    "train/PNEUMONIA/person900_virus_1.jpeg": "not an image",
    "train/PNEUMONIA/person901_virus_1.dcm": "wrong extension",
    "test/NORMAL/IM-0902-0001.png": "decompression bomb",
}


@pytest.fixture
def leaky(tmp_path):
    """train/test folders: patient 5 in both, one byte-identical and one re-encoded copy across splits,
    and one file of each bad kind."""
    root = tmp_path / "leaky"
    for i in range(6):
        save(root / "train" / "NORMAL" / f"IM-{i:04d}-0001.png", textured(i))
        save(root / "train" / "PNEUMONIA" / f"person{i}_bacteria_{i}.png", textured(100 + i))
    for i in range(6, 9):
        save(root / "test" / "NORMAL" / f"IM-{i:04d}-0001.png", textured(i))
        save(root / "test" / "PNEUMONIA" / f"person{i}_virus_{i}.png", textured(100 + i))
    save(root / "test" / "PNEUMONIA" / "person5_bacteria_77.png", textured(200))  # patient 5 again
    shutil.copy(root / "train" / "NORMAL" / "IM-0001-0001.png", root / "test" / "NORMAL" / "IM-0050-0001.png")
    buffer = io.BytesIO()  # the same picture re-encoded smaller and lossy: a near duplicate
    Image.fromarray(textured(102)).resize((48, 48)).save(buffer, "JPEG", quality=40)
    (root / "test" / "PNEUMONIA" / "person60_virus_1.jpeg").write_bytes(buffer.getvalue())
    (root / "train" / "NORMAL" / "IM-0900-0001.jpeg").write_bytes(b"")
    truncated_jpeg(root / "train" / "NORMAL" / "IM-0901-0001.jpeg")
    (root / "train" / "PNEUMONIA" / "person900_virus_1.jpeg").write_bytes(np.random.default_rng(3).bytes(900))
    save(root / "train" / "PNEUMONIA" / "person901_virus_1.dcm", textured(9), format="PNG")
    png_header_only(root / "test" / "NORMAL" / "IM-0902-0001.png", 20000, 20000)
    return root


def test_validate_lists_every_bad_file_with_its_reason_and_nothing_else(leaky):
    report = validate_dataset(leaky)
    assert report.checked == 12 + 6 + 3 + 5
    found = {p.removeprefix(f"{leaky}/"): r for p, r in report.bad}
    assert set(found) == set(BAD)
    for name, reason in BAD.items():
        assert reason in found[name]
    assert not report.ok


def test_validate_of_a_clean_dataset_is_ok(synthetic_dataset):
    report = validate_dataset(synthetic_dataset)
    assert report.ok and report.checked == 40


def test_inspect_finds_planted_leakage_and_writes_its_outputs(leaky, tmp_path):
    report = inspect_dataset(leaky, tmp_path / "out")
    s = report.summary
    assert s["counts"]["train"] == {"NORMAL": 8, "PNEUMONIA": 8, "total": 16}
    assert s["counts"]["test"] == {"NORMAL": 5, "PNEUMONIA": 5, "total": 10}
    assert s["patients"]["train"]["NORMAL"] == 8 and s["patients"]["test"]["PNEUMONIA"] == 5
    assert s["imbalance"]["train"] == 1.0
    assert {u["path"].removeprefix(f"{leaky}/") for u in s["unreadable"]} == set(BAD)
    leak = s["leakage"]
    assert [p["patient_id"] for p in leak["patients_in_several_splits"]["patients"]] == ["person5_bacteria"]
    assert leak["exact_duplicates_across_splits"]["count"] == 1
    assert sorted(x.rsplit("/", 1)[1] for x in leak["exact_duplicates_across_splits"]["groups"][0]) == [
        "IM-0001-0001.png", "IM-0050-0001.png"]
    near = {tuple(sorted((p["a"].rsplit("/", 1)[1], p["b"].rsplit("/", 1)[1])))
            for p in leak["near_duplicates_across_splits"]["pairs"]}
    assert near == {("IM-0001-0001.png", "IM-0050-0001.png"), ("person2_bacteria_2.png", "person60_virus_1.jpeg")}
    assert leak["near_duplicates_within_split"]["count"] == 0
    assert s["images"]["modes"] == {"L": 21} and s["images"]["formats"] == {"PNG": 20, "JPEG": 1}
    written = json.loads(report.files["summary"].read_text())
    assert written["disclaimer"] == DISCLAIMER and written["leakage"] == leak
    for key in ("class_balance", "samples"):
        with Image.open(report.files[key]) as im:
            assert im.format == "PNG" and im.width > 300
    table = format_table(s)
    assert "patients in more than one split:          1" in table and "unreadable files: 5" in table


@pytest.mark.usefixtures("no_figures")
def test_inspect_on_real_images_reports_sizes_and_no_leakage(real_subset, tmp_path):
    s = inspect_dataset(real_subset, tmp_path / "out", samples_per_class=2).summary
    assert s["counts"]["train"] == {"NORMAL": 24, "PNEUMONIA": 24, "total": 48}
    assert s["images"]["most_common_sizes"] == {"224x224": 48} and not s["unreadable"]
    assert s["leakage"]["near_duplicates_within_split"]["count"] == 0


@pytest.mark.usefixtures("no_figures")
def test_inspect_of_flat_folders_counts_everything_under_all_and_flags_near_duplicates(tmp_path):
    root = tmp_path / "flat"
    save(root / "NORMAL" / "a.png", textured(1))
    save(root / "PNEUMONIA" / "b.png", textured(2))
    save(root / "PNEUMONIA" / "c.png", textured(1))  # same picture as a.png, another "patient"
    s = inspect_dataset(root, tmp_path / "out").summary
    assert s["counts"] == {"all": {"NORMAL": 1, "PNEUMONIA": 2, "total": 3}} and s["imbalance"]["all"] == 2.0
    leak = s["leakage"]
    assert leak["patients_in_several_splits"]["count"] == 0 and leak["near_duplicates_across_splits"]["count"] == 0
    assert leak["near_duplicates_within_split"]["count"] == 1
    assert leak["near_duplicates_within_split"]["pairs"][0]["distance"] == 0
