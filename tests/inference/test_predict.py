"""Prediction on files, folders, globs and DICOMs: bad files are reported on their row, the rest scored."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import pneumoscan
from helpers.images import write_dicom
from pneumoscan.cli import main
from pneumoscan.inference.inputs import expand_inputs
from pneumoscan.inference.results import write_predictions
from pneumoscan.models import ModelMeta, build_model, save_model

SIZE = 32

CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage


def radiograph(seed: int, size: int = 48) -> np.ndarray:
    """A fake radiograph: noise and two dark 'lungs' (enough to be neither blank nor colour)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    img = rng.normal(140, 25, (size, size))
    for cx in (0.3, 0.7):
        img -= 70 * np.exp(-(((xx - cx) / 0.12) ** 2 + ((yy - 0.5) / 0.25) ** 2))
    return np.clip(img, 0, 255).astype(np.uint8)


def save_png(path: Path, seed: int, mode: str = "L") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(radiograph(seed), "L").convert(mode).save(path)
    return path


def dicom_file(path: Path, seed: int) -> Path:
    return write_dicom(path, radiograph(seed).astype(np.uint16) * 16, bits_stored=12, sop_class=CR_STORAGE)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    save_model(folder, build_model("seed-cnn", SIZE), ModelMeta(name="seed-cnn", image_size=SIZE, threshold=0.5,
                                                                version="0.1.0"))
    return folder


def test_bad_files_are_reported_on_their_own_row_and_the_rest_are_scored_in_order(model_dir, tmp_path):
    good = [save_png(tmp_path / f"good{i}.png", i) for i in range(3)]
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(good[0].read_bytes()[:60])
    missing = tmp_path / "missing.png"
    files = [good[0], notes, good[1], truncated, missing, good[2]]

    rows = pneumoscan.load(model_dir).predict(files, batch_size=2)

    assert [r.source for r in rows] == [str(f) for f in files]
    scored = [r for r in rows if r.error is None]
    assert [r.source for r in scored] == [str(f) for f in good]
    assert all(0.0 <= r.probability <= 1.0 and r.label in ("NORMAL", "PNEUMONIA") for r in scored)
    errors = {Path(r.source).name: r.error for r in rows if r.error}
    assert set(errors) == {"notes.txt", "cut.png", "missing.png"}
    assert all(error.startswith(str(tmp_path)) for error in errors.values())  # each message names its file
    assert "not an image" in errors["notes.txt"] and "No such file" in errors["missing.png"]
    assert all(r.probability is None and r.label is None for r in rows if r.error)


def test_batch_size_does_not_change_any_probability(model_dir, tmp_path):
    files = [save_png(tmp_path / f"x{i}.png", i) for i in range(5)]
    classifier = pneumoscan.load(model_dir)
    one = [r.probability for r in classifier.predict(files, batch_size=1)]
    many = [r.probability for r in classifier.predict(files, batch_size=4)]
    np.testing.assert_allclose(one, many, atol=1e-6)


def test_label_follows_the_threshold_stored_with_the_model(model_dir, tmp_path):
    image = save_png(tmp_path / "x.png", 7)
    model, meta = pneumoscan.models.load_model(model_dir)
    p = pneumoscan.load(model_dir).predict([image])[0].probability
    for threshold, label in ((p - 1e-3, "PNEUMONIA"), (p + 1e-3, "NORMAL")):
        meta.threshold = threshold
        folder = tmp_path / f"t{label}"
        save_model(folder, model, meta)
        row = pneumoscan.load(folder).predict([image])[0]
        assert (row.label, row.threshold) == (label, pytest.approx(threshold))


def test_images_of_the_wrong_kind_are_refused_but_grey_rgb_files_are_scored(model_dir, tmp_path):
    photo = tmp_path / "holiday.jpeg"
    rng = np.random.default_rng(0)
    colours = np.stack([radiograph(1), rng.integers(0, 255, (48, 48)), 255 - radiograph(2)], -1).astype(np.uint8)
    Image.fromarray(colours, "RGB").save(photo)
    blank = tmp_path / "blank.png"
    Image.new("L", (48, 48), 128).save(blank)
    grey_rgb = save_png(tmp_path / "grey-as-rgb.jpeg", 3, mode="RGB")  # how the public Kermany copies are stored

    rows = {Path(r.source).name: r for r in pneumoscan.load(model_dir).predict([photo, blank, grey_rgb])}

    assert "colour picture" in rows["holiday.jpeg"].error
    assert "blank image" in rows["blank.png"].error
    assert rows["grey-as-rgb.jpeg"].error is None and rows["grey-as-rgb.jpeg"].probability is not None


def test_a_file_stored_in_colour_is_decoded_once(model_dir, tmp_path, monkeypatch):
    """The colour test reads the pixels already decoded: the public radiographs are grey saved as RGB
    JPEGs, and decoding each a second time to test its colour cost 40 % of prediction's decoding."""
    grey_rgb = save_png(tmp_path / "grey-as-rgb.jpeg", 3, mode="RGB")
    photo = tmp_path / "holiday.jpeg"
    Image.fromarray(np.stack([radiograph(1), np.roll(radiograph(1), 20, 1), 255 - radiograph(2)], -1)).save(photo)
    classifier = pneumoscan.load(model_dir)
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda *args, **kwargs: opened.append(args) or real_open(*args, **kwargs))

    rows = classifier.predict([grey_rgb, photo])

    assert rows[0].probability is not None and "colour picture" in rows[1].error
    assert len(opened) == 2


def test_many_files_are_decoded_on_worker_processes_into_the_rows_of_one_process(model_dir, tmp_path):
    """The table decodes as the streamed output does: files on worker processes, every row as decoding
    them here gives, in the order given, with bad files and other inputs in between."""
    import psutil

    files = [save_png(tmp_path / f"x{i:03d}.png", i) for i in range(80)]
    cut = tmp_path / "cut.png"
    cut.write_bytes(files[0].read_bytes()[:60])
    sources = [*files[:40], cut, radiograph(99), *files[40:]]
    classifier = pneumoscan.load(model_dir)
    here = classifier.predict(sources, batch_size=8, workers=1)

    rows = classifier.iter_predict(sources, batch_size=8, workers=2)
    first = next(rows)
    decoding = [p for p in psutil.Process().children() if p.is_running()]
    parallel = [first, *rows]

    assert len(decoding) >= 2
    assert [(r.source, r.probability, r.error) for r in parallel] == [(r.source, r.probability, r.error) for r in here]
    assert [r.source for r in here] == [*map(str, files[:40]), str(cut), "<image 41>", *map(str, files[40:])]
    assert "corrupt or truncated" in here[40].error and here[41].probability is not None


def test_cli_table_draws_its_progress_bar_when_asked_and_decodes_with_workers(model_dir, tmp_path, capsys):
    files = [save_png(tmp_path / "in" / f"x{i:03d}.png", i) for i in range(70)]

    assert main(["predict", str(model_dir), str(tmp_path / "in"), "--workers", "2", "--progress"]) == 0

    out, err = capsys.readouterr()
    assert all(f.name in out for f in files) and "scored 70 of 70 files" in out
    assert "scoring" in err and "img" in err


def test_folders_are_searched_recursively_for_images_and_extensionless_dicoms(tmp_path):
    a = save_png(tmp_path / "scans" / "a.png", 1)
    b = save_png(tmp_path / "scans" / "deep" / "er" / "b.jpeg", 2)
    c = dicom_file(tmp_path / "scans" / "deep" / "IM0001", 3)  # scanners write DICOMs without extension
    (tmp_path / "scans" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    save_png(tmp_path / "scans" / ".hidden" / "h.png", 4)
    (tmp_path / "scans" / "readme.txt").write_text("notes")
    explicit = tmp_path / "explicit.txt"
    explicit.write_text("named on purpose")
    d = save_png(tmp_path / "globbed" / "d.png", 5)

    files = expand_inputs([tmp_path / "scans", str(tmp_path / "globbed" / "*.png"), explicit, tmp_path / "scans" / "a.png"])

    assert sorted(files) == sorted(map(str, [a, b, c, d, explicit]))  # a given twice is kept once


def test_a_dicom_file_is_scored_from_the_same_pixels_as_the_picture_it_holds(model_dir, tmp_path):
    png = save_png(tmp_path / "x.png", 11)
    dcm = dicom_file(tmp_path / "x.dcm", 11)
    other = save_png(tmp_path / "other.png", 12)
    classifier = pneumoscan.load(model_dir)
    rows = classifier.predict([png, dcm])
    assert rows[1].error is None and 0.0 <= rows[1].probability <= 1.0

    def seen(path):  # what the network sees after the per-image standardisation inside every model
        x = classifier.preprocess(path)
        return (x - x.mean()) / x.std()

    same, different = np.abs(seen(dcm) - seen(png)).mean(), np.abs(seen(other) - seen(png)).mean()
    assert same < 0.05 < different  # DICOM is rescaled to its own range: only rounding differs


def test_csv_and_json_outputs_hold_every_row_with_model_threshold_and_error(model_dir, tmp_path):
    files = [save_png(tmp_path / "ok.png", 1), tmp_path / "nope.png"]
    rows = pneumoscan.load(model_dir).predict(files)

    table = list(csv.DictReader(io.StringIO(write_predictions(rows, tmp_path / "p.csv").read_text())))
    payload = json.loads(write_predictions(rows, tmp_path / "p.json").read_text())

    assert [r["file"] for r in table] == [str(f) for f in files]
    assert float(table[0]["probability"]) == pytest.approx(rows[0].probability)
    assert table[0]["model"] == "seed-cnn" and table[0]["version"] == "0.1.0" and table[0]["threshold"] == "0.5"
    assert table[1]["probability"] == "" and "nope.png" in table[1]["error"]
    assert payload["predictions"][1]["probability"] is None and "NOT a medical device" in payload["disclaimer"]


def test_cli_predict_exits_0_with_some_bad_files_and_1_when_none_can_be_scored(model_dir, tmp_path, capsys):
    good = save_png(tmp_path / "good.png", 1)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"garbage")
    out = tmp_path / "preds.json"

    assert main(["predict", str(model_dir), str(good), str(bad), "--out", str(out)]) == 0
    printed = capsys.readouterr()
    # With --out the table is in the file; the terminal shows the summary and the rows that failed.
    assert "good.png" not in printed.out and "bad.png" in printed.out and "scored 1 of 2 files" in printed.out
    assert len(json.loads(out.read_text())["predictions"]) == 2

    assert main(["predict", str(model_dir), str(bad)]) == 1
    assert main(["predict", str(model_dir), str(good), "--out", str(tmp_path / "p.xlsx")]) == 2
    assert ".csv, .jsonl, .parquet or .json" in capsys.readouterr().err
