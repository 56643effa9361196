"""CSV formula injection: a file name or a DICOM identifier that a spreadsheet would evaluate (``=``,
``+``, ``-``, ``@``, tab, CR) is written with a leading quote in `predict --out` and `--worklist`, and
`--resume` still recognises the file by its name."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from helpers.images import write_dicom
from pneumoscan.cli import main

FORMULA = "=cmd|' /C calc'!A0"


@pytest.fixture(scope="module")
def model_run(tmp_path_factory) -> Path:
    """A run folder with a 32 px seed-cnn of random weights: what is checked here is the files written."""
    import torch

    from pneumoscan.models import ModelMeta, build_model, save_model

    torch.manual_seed(0)
    run = tmp_path_factory.mktemp("csv-run")
    save_model(run, build_model("seed-cnn", 32), ModelMeta(name="seed-cnn", image_size=32, threshold=0.5,
                                                           operating_points={"sens95": 0.2}))
    return run


def _inputs(folder: Path) -> None:
    from helpers.synthetic import write_synthetic_image

    folder.mkdir()
    write_synthetic_image(folder / "=HYPERLINK(1).png", 1, seed=1, size=48)
    write_synthetic_image(folder / "+2+3.png", 0, seed=2, size=48)
    write_dicom(folder / "study.dcm", np.random.default_rng(3).integers(200, 3800, (48, 48)), bits_stored=12,
                patient_id=FORMULA, accession="+1+1", sop_class="1.2.840.10008.5.1.4.1.1.1")


def test_predict_out_worklist_and_resume_neutralise_formulas_and_read_them_back(model_run, tmp_path, monkeypatch,
                                                                             capsys):
    _inputs(tmp_path / "in")
    monkeypatch.chdir(tmp_path / "in")  # relative names: the file column starts with the name itself
    inputs = ["=HYPERLINK(1).png", "+2+3.png", "study.dcm"]
    out, worklist = tmp_path / "results.csv", tmp_path / "worklist.csv"
    assert main(["predict", str(model_run), *inputs, "--out", str(out), "--worklist", str(worklist)]) == 0

    rows = list(csv.DictReader(out.open(newline="")))
    assert sorted(r["file"] for r in rows) == ["'+2+3.png", "'=HYPERLINK(1).png", "study.dcm"]
    study = next(r for r in rows if r["file"] == "study.dcm")
    assert (study["patient_id"], study["accession_number"]) == ("'" + FORMULA, "'+1+1")
    assert all(0 <= float(r["probability"]) <= 1 for r in rows)  # numbers are written as numbers

    lines = worklist.read_text().splitlines()
    table = list(csv.DictReader(lines[1:]))
    assert sorted(r["file"] for r in table) == ["'+2+3.png", "'=HYPERLINK(1).png", "study.dcm"]
    study = next(r for r in table if r["file"] == "study.dcm")
    assert (study["patient_id"], study["accession_number"]) == ("'" + FORMULA, "'+1+1")
    for row in table:
        assert not row["file"].startswith(("=", "+", "-", "@"))

    capsys.readouterr()
    assert main(["predict", str(model_run), *inputs, "--out", str(out), "--resume"]) == 0
    assert len(list(csv.DictReader(out.open(newline="")))) == 3  # each file recognised, none scored twice
