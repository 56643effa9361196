"""Folders that a dataset does not use are reported, with the reason, never dropped without a word."""

from __future__ import annotations

import pytest

from helpers.synthetic import write_synthetic_image
from pneumoscan.cli import main
from pneumoscan.data import load_dataset


@pytest.mark.usefixtures("no_figures")
def test_a_third_class_folder_is_reported_by_load_dataset_and_data_inspect(tmp_path, capsys):
    root = tmp_path / "three-classes"
    for label, name in ((0, "Normal"), (1, "Pneumonia"), (1, "COVID19")):
        for i in range(3):
            write_synthetic_image(root / name / f"IM-{i:04d}-{label}.png", label, seed=i + 10 * label)

    notes = load_dataset(root).notes
    assert any("COVID19/" in n and "not a class folder" in n and "3 image(s) are not used" in n for n in notes), notes

    assert main(["data", "inspect", str(root), "--out", str(tmp_path / "inspect"), "--workers", "1"]) == 0
    assert "COVID19/: not a class folder" in capsys.readouterr().out


def test_an_unknown_folder_beside_the_split_folders_is_reported(tmp_path):
    root = tmp_path / "splits"
    for split in ("train", "test", "external"):
        for label, name in ((0, "NORMAL"), (1, "PNEUMONIA")):
            write_synthetic_image(root / split / name / f"IM-{label:04d}-0001.png", label, seed=label)
    notes = load_dataset(root).notes
    assert any("external/" in n and "not a split folder" in n for n in notes), notes
    assert not any("train/" in n or "test/" in n for n in notes)
