import os

import pytest

from pneumoscan._io import atomic_write, atomic_write_text


def test_a_write_that_fails_midway_leaves_the_old_file_whole_and_no_temporary(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old")

    def torn_write(tmp):
        tmp.write_text("half of the new")
        raise KeyboardInterrupt  # a kill at the worst moment

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, torn_write)
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["report.json"]


def test_atomic_write_replaces_an_existing_file_and_creates_missing_folders(tmp_path):
    atomic_write_text(tmp_path / "a" / "b.txt", "old")
    atomic_write_text(tmp_path / "a" / "b.txt", "new")
    assert (tmp_path / "a" / "b.txt").read_text() == "new"
    assert os.listdir(tmp_path / "a") == ["b.txt"]


def test_atomically_written_files_get_the_usual_permissions_not_owner_only(tmp_path):
    mask = os.umask(0o022)
    os.umask(mask)
    written = atomic_write_text(tmp_path / "model.json", "{}")
    assert written.stat().st_mode & 0o777 == 0o666 & ~mask


FORMULAS = ["=cmd|' /C calc'!A0", "+1+1", "-2+3", "@SUM(A1:A9)", "\t=1", "\r=1", "'=1", "''+x"]


def test_atomic_write_csv_quotes_cells_a_spreadsheet_would_evaluate_and_leaves_numbers_alone(tmp_path):
    import csv

    from pneumoscan._io import atomic_write_csv, csv_text

    path = atomic_write_csv(tmp_path / "t.csv", ["text", "number"],
                            [*([f, -0.5] for f in FORMULAS), {"text": "-0.5", "number": -3}, ["plain", 1e-9]])
    rows = list(csv.reader(path.open(newline="")))[1:]
    for (text, number), formula in zip(rows, FORMULAS, strict=False):
        assert text == "'" + formula and number == "-0.5"
    assert rows[-2] == ["-0.5", "-3"] and rows[-1] == ["plain", "1e-09"]  # numbers, even as text, stay
    assert [csv_text(text) for text, _ in rows] == [*FORMULAS, "-0.5", "plain"]  # and read back exactly


def test_csv_text_leaves_cells_it_did_not_write_unchanged():
    from pneumoscan._io import csv_text

    assert [csv_text(c) for c in ("'quoted", "'", "''", "'-0.5", "x")] == ["'quoted", "'", "''", "'-0.5", "x"]


def test_a_manifest_with_names_that_look_like_formulas_reads_back_unchanged(tmp_path):
    from pneumoscan.data import write_manifest
    from pneumoscan.data.manifest import load_manifest
    from pneumoscan.data.records import Sample

    names = ["=HYPERLINK(1).png", "+x.png", "@y.png", "'=z.png", "-0.5.png"]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    samples = [Sample(tmp_path / n, i % 2, f"=P{i}", "train") for i, n in enumerate(names)]
    manifest = write_manifest(samples, tmp_path / "split.csv")
    assert "'=HYPERLINK" in manifest.read_text()
    loaded = load_manifest(manifest, keep_missing=True).samples
    assert [(s.path.name, s.patient_id) for s in loaded] == [(n, f"=P{i}") for i, n in enumerate(names)]
