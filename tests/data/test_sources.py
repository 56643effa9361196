"""load_dataset: every source yields the same Sample records; bad layouts are one-line errors."""

from __future__ import annotations

import os

import numpy as np
import pytest

from helpers.images import save, write_dicom
from pneumoscan.data import kermany_patient_id, load_dataset
from pneumoscan.data.manifest import write_manifest
from pneumoscan.errors import DatasetError


def _img(path, value: int = 100):
    return save(path, np.full((8, 8), value, np.uint8))


@pytest.mark.parametrize(
    ("stem", "patient"),
    [
        ("person1449_bacteria_3745", "person1449_bacteria"),
        ("person1449_virus_2482", "person1449_virus"),
        ("PERSON0012_Virus_1", "person12_virus"),
        ("person1455_virus_2489", "person1455_virus"),
        ("NORMAL2-IM-1427-0001", "NORMAL2-IM-1427"),
        ("normal2-im-1427-0002", "NORMAL2-IM-1427"),
        ("IM-1427-0001", "IM-1427"),
        ("IM-0001-0001", "IM-0001"),
        ("IM-0429-0001-0002", "IM-0429"),
        ("scan_42", "scan_42"),
    ],
)
def test_kermany_file_names_give_the_patient_id(stem, patient):
    assert kermany_patient_id(stem) == patient


def test_person_and_im_numbers_are_different_patients():
    # Merging them would pair normal patient IM-1427 with pneumonia patient person1427.
    assert kermany_patient_id("person1427_bacteria_1") != kermany_patient_id("NORMAL2-IM-1427-0001")


def test_split_folders_with_case_insensitive_class_names_are_read(tmp_path):
    _img(tmp_path / "Train" / "normal" / "IM-0001-0001.png")
    _img(tmp_path / "Train" / "Pneumonia" / "person7_bacteria_1.jpeg")
    _img(tmp_path / "Train" / "Pneumonia" / "person7_virus_2.jpeg")
    _img(tmp_path / "validation" / "NORMAL" / "IM-0002-0001.png")
    _img(tmp_path / "validation" / "PNEUMONIA" / "person8_virus_3.png")
    index = load_dataset(tmp_path)
    assert index.source == "folders"
    rows = {(s.path.name, s.label, s.patient_id, s.split) for s in index.samples}
    assert rows == {
        ("IM-0001-0001.png", 0, "IM-0001", "train"), ("person7_bacteria_1.jpeg", 1, "person7_bacteria", "train"),
        ("person7_virus_2.jpeg", 1, "person7_virus", "train"), ("IM-0002-0001.png", 0, "IM-0002", "val"),
        ("person8_virus_3.png", 1, "person8_virus", "val"),
    }
    assert index.splits == ["train", "val"]


def test_flat_class_folders_have_no_split(tmp_path):
    _img(tmp_path / "NORMAL" / "a.png")
    _img(tmp_path / "PNEUMONIA" / "b.png")
    index = load_dataset(tmp_path)
    assert [(s.label, s.split, s.patient_id) for s in index.samples] == [(0, None, "a"), (1, None, "b")]


def test_archive_junk_is_ignored_with_a_note(tmp_path):
    top = tmp_path / "chest_xray"
    for split in ("train", "test"):
        _img(top / split / "NORMAL" / f"IM-000{len(split)}-0001.jpeg")
        _img(top / split / "PNEUMONIA" / f"person{len(split)}_virus_1.jpeg")
    (top / "train" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (top / "train" / "NORMAL" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    _img(top / "chest_xray" / "train" / "NORMAL" / "IM-0005-0001.jpeg")  # the duplicated nested copy
    _img(top / "chest_xray" / "train" / "PNEUMONIA" / "person9_virus_1.jpeg")
    (tmp_path / "__MACOSX" / "chest_xray").mkdir(parents=True)
    (tmp_path / "__MACOSX" / "chest_xray" / "._IM-0005-0001.jpeg").write_bytes(b"\0\5\26\7")
    index = load_dataset(tmp_path)
    assert len(index.samples) == 4 and all("chest_xray/chest_xray" not in str(s.path) for s in index.samples)
    notes = " | ".join(index.notes)
    assert "2 .DS_Store files" in notes
    assert "duplicated nested copy" in notes and "__MACOSX" in notes and "archive's top folder" in notes


def test_real_data_is_listed_with_its_official_splits_and_the_stray_ds_store_noted(shared_data):
    root = shared_data / "chest_xray"
    index = load_dataset(root)
    counts: dict[tuple[str, int], int] = {}
    for s in index.samples:
        counts[(s.split, s.label)] = counts.get((s.split, s.label), 0) + 1
    # The expected counts follow what is on disk: every JPEG of every split's class folders is listed.
    on_disk = {(split.name, label): len(list((split / name).glob("*.jpeg")))
               for split in root.iterdir() if split.is_dir()
               for label, name in enumerate(("NORMAL", "PNEUMONIA")) if (split / name).is_dir()}
    assert counts == {k: v for k, v in on_disk.items() if v}
    # The official train and val are complete in the shared copy.
    assert counts[("train", 0)] == 1341 and counts[("train", 1)] == 3875
    assert counts[("val", 0)] == 8 and counts[("val", 1)] == 8
    assert any(".DS_Store" in note for note in index.notes)


def test_bacterial_and_viral_cases_with_one_person_number_are_two_patients():
    # The person number is counted per type: person1449_bacteria and person1449_virus are two children.
    assert kermany_patient_id("person1449_bacteria_3745") != kermany_patient_id("person1449_virus_2482")
    assert kermany_patient_id("person1449_bacteria_3745") == kermany_patient_id("person1449_bacteria_3746")


def test_the_two_normal_series_are_numbered_separately():
    assert kermany_patient_id("NORMAL2-IM-0312-0001") != kermany_patient_id("IM-0312-0001")
    assert kermany_patient_id("NORMAL2-IM-0374-0001-0002") == kermany_patient_id("NORMAL2-IM-0374-0001-0001")


def test_official_test_split_shares_no_patient_with_train(shared_data):
    # The official test holds no (number, type) pair of train: a leakage alarm there would be false.
    index = load_dataset(shared_data / "chest_xray")
    by_split: dict[str, set[str]] = {}
    for s in index.samples:
        by_split.setdefault(s.split, set()).add(s.patient_id)
    if "test" not in by_split:
        pytest.skip("../shared/data/chest_xray has no test/ split")
    assert not by_split["test"] & by_split["train"]


def test_root_without_class_folders_is_an_error_naming_the_root_and_the_fix(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(DatasetError, match=r"no class folders; expected NORMAL/ and PNEUMONIA/.*found: images"):
        load_dataset(tmp_path)


def test_empty_class_folder_is_an_error_naming_the_folder(tmp_path):
    _img(tmp_path / "train" / "NORMAL" / "a.png")
    _img(tmp_path / "train" / "PNEUMONIA" / "b.png")
    (tmp_path / "test" / "PNEUMONIA").mkdir(parents=True)
    _img(tmp_path / "test" / "NORMAL" / "c.png")
    with pytest.raises(DatasetError, match=r"test/PNEUMONIA: empty PNEUMONIA folder"):
        load_dataset(tmp_path)


def test_missing_class_is_an_error(tmp_path):
    _img(tmp_path / "NORMAL" / "a.png")
    with pytest.raises(DatasetError, match="no PNEUMONIA images"):
        load_dataset(tmp_path)


def test_manifest_round_trips_every_field(tmp_path, synthetic_dataset):
    index = load_dataset(synthetic_dataset)
    samples = [s.with_split("val" if i % 3 == 0 else "train") for i, s in enumerate(index.samples)]
    manifest = write_manifest(samples, tmp_path / "m.csv")
    back = load_dataset(manifest)
    assert back.source == "manifest"
    key = lambda s: (os.path.abspath(s.path), s.label, s.patient_id, s.split)  # noqa: E731
    assert sorted(map(key, back.samples)) == sorted(map(key, samples))


def test_manifest_with_relative_paths_labels_as_names_and_no_patient_column(tmp_path):
    _img(tmp_path / "imgs" / "person3_virus_1.png")
    _img(tmp_path / "imgs" / "IM-0004-0001.png")
    (tmp_path / "m.csv").write_text("path,label\nimgs/person3_virus_1.png,Pneumonia\nimgs/IM-0004-0001.png,0\n")
    index = load_dataset(tmp_path / "m.csv")
    assert [(s.label, s.patient_id, s.split) for s in index.samples] == [(1, "person3_virus", None), (0, "IM-0004", None)]


def test_manifest_skips_missing_files_with_a_note(tmp_path):
    _img(tmp_path / "a.png")
    (tmp_path / "m.csv").write_text("path,label,split\na.png,1,test\ngone.png,0,train\n")
    index = load_dataset(tmp_path / "m.csv")
    assert len(index.samples) == 1 and index.samples[0].split == "test"
    assert "skipped 1 rows" in index.notes[0]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("file,label\na.png,0\n", r"m\.csv: missing column\(s\) path"),
        ("path,diagnosis\na.png,0\n", r"m\.csv: missing column\(s\) label"),
        ("path,label\na.png,covid\n", r"m\.csv:2: unknown label 'covid'; use 0/1 or NORMAL/PNEUMONIA"),
        ("path,label,split\na.png,0,holdout\n", r"m\.csv:2: unknown split 'holdout'"),
    ],
)
def test_bad_manifest_is_a_one_line_error_naming_the_file(tmp_path, text, message):
    _img(tmp_path / "a.png")
    (tmp_path / "m.csv").write_text(text)
    with pytest.raises(DatasetError, match=message) as info:
        load_dataset(tmp_path / "m.csv")
    assert "\n" not in str(info.value)


def test_rsna_gives_one_sample_per_patient_pneumonia_if_any_box(tmp_path):
    images = tmp_path / "stage_2_train_images"
    for patient in ("p-a", "p-b", "p-c"):
        write_dicom(images / f"{patient}.dcm", np.zeros((8, 8), np.uint16), patient_id=patient)
    (tmp_path / "stage_2_train_labels.csv").write_text(
        "patientId,x,y,width,height,Target\n"
        "p-a,,,,,0\n"
        "p-b,10,20,30,40,1\np-b,50,60,30,40,1\n"
        "p-c,,,,,0\n"
        "p-missing,,,,,0\n"
    )
    for root in (tmp_path, tmp_path / "stage_2_train_labels.csv"):
        index = load_dataset(root)
        assert index.source == "rsna"
        assert [(s.path.name, s.label, s.patient_id, s.split) for s in index.samples] == [
            ("p-a.dcm", 0, "p-a", None), ("p-b.dcm", 1, "p-b", None), ("p-c.dcm", 0, "p-c", None)]
        assert any("skipped 1 patients" in n for n in index.notes)


def test_rsna_unknown_target_is_an_error(tmp_path):
    (tmp_path / "stage_2_train_images").mkdir()
    (tmp_path / "stage_2_train_labels.csv").write_text("patientId,x,y,width,height,Target\np,,,,,maybe\n")
    with pytest.raises(DatasetError, match=r"stage_2_train_labels\.csv:2: unknown Target 'maybe'"):
        load_dataset(tmp_path)


def _medmnist(path, n=(4, 2, 3)):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, count in zip(("train", "val", "test"), n, strict=True):
        arrays[f"{split}_images"] = rng.integers(0, 255, (count, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(count) % 2).reshape(-1, 1).astype(np.uint8)
    np.savez(path, **arrays)
    return arrays


def test_medmnist_npz_is_materialised_once_as_pngs_with_its_own_splits(tmp_path):
    arrays = _medmnist(tmp_path / "pneumoniamnist.npz")
    index = load_dataset(tmp_path / "pneumoniamnist.npz")
    assert index.source == "medmnist" and len(index.samples) == 9
    assert any("no patient ids" in n for n in index.notes)
    by_split = {split: [s for s in index.samples if s.split == split] for split in ("train", "val", "test")}
    assert [len(v) for v in by_split.values()] == [4, 2, 3]
    assert len({s.patient_id for s in index.samples}) == 9  # one patient per image, unique across splits
    first = next(s for s in by_split["train"] if s.path.stem == "train-00001")
    assert first.label == 1
    from pneumoscan.data import read_image

    assert np.array_equal(read_image(first.path), arrays["train_images"][1])
    stamp = first.path.stat().st_mtime_ns
    again = load_dataset(tmp_path)  # the folder holding the npz works too
    assert again.source == "medmnist" and first.path.stat().st_mtime_ns == stamp


def test_medmnist_with_a_missing_array_is_an_error(tmp_path):
    np.savez(tmp_path / "pneumoniamnist.npz", train_images=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(DatasetError, match=r"pneumoniamnist\.npz: missing array\(s\) train_labels"):
        load_dataset(tmp_path / "pneumoniamnist.npz")
