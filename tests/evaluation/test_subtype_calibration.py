"""`calibrate` and the subtype head: its temperature re-fitted where the site sample names the subtype of
enough patients of each kind (the answers unchanged), else kept, with the reason in the output and the card.

The model files here have no subtype head: the head's probability is stood in by a fixed function of the
pixels (patched where the calibration asks the classifier for it).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from helpers.fake_runs import make_dataset, make_run, with_subtype_rule
from pneumoscan.cli import main
from pneumoscan.evaluation import subtype as S
from pneumoscan.evaluation.calibrate import calibrate
from pneumoscan.evaluation.operating import apply_temperature
from pneumoscan.models.artifact import read_meta
from pneumoscan.models.subtype_meta import subtype_label

RULE = {"temperature": 1.5, "threshold": 0.45, "uncertain": [0.35, 0.6], "rule": "chosen on validation patients"}


def stand_in_head(classifier, images, batch_size=64, tta=False):
    values = images.reshape(len(images), -1)
    return 1 / (1 + np.exp(-(values.std(axis=1) - values.std()) * 40))


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """40 NORMAL and 40 PNEUMONIA patients (2 images each) and two manifests of them: with the subtype of every
    PNEUMONIA patient (20 bacterial, 20 viral), and without."""
    root = make_dataset(tmp_path_factory.mktemp("site"), {"test": 80}, start=70)
    files = sorted((root / "test").rglob("*.png"))
    rows = []
    for f in files:
        pneumonia = f.parent.name == "PNEUMONIA"
        patient = int(f.stem.split("_")[0].removeprefix("person")) if pneumonia else None
        rows.append((f, int(pneumonia), ("viral" if patient % 2 else "bacterial") if pneumonia else ""))
    (root / "subtyped.csv").write_text("path,label,subtype\n" + "".join(f"{f},{y},{s}\n" for f, y, s in rows))
    (root / "plain.csv").write_text("path,label\n" + "".join(f"{f},{y}\n" for f, y, _ in rows))
    return root


@pytest.fixture(scope="module")
def headed_run(tmp_path_factory, tiny_data) -> Path:
    return with_subtype_rule(make_run(tmp_path_factory.mktemp("run"), tiny_data, threshold=0.5), RULE)


def test_a_sample_that_names_enough_subtypes_refits_the_temperature_and_keeps_the_answers(headed_run, site,
                                                                                          tmp_path, monkeypatch):
    monkeypatch.setattr(S, "viral_probabilities", stand_in_head)
    result = calibrate(headed_run, site / "subtyped.csv", out=tmp_path / "v", resamples=100)
    record = json.loads((result.folder / "calibration.json").read_text())["subtype"]
    assert record["refitted"] and record["patients"] == {"bacterial": 20, "viral": 20}
    new = read_meta(result.folder).subtype
    assert new["temperature"] == pytest.approx(record["temperature"])
    assert 0.5 * 1.5 - 1e-9 <= new["temperature"] <= 2 * 1.5 + 1e-9 and new["temperature"] != 1.5
    probabilities = np.linspace(0.001, 0.999, 999)  # the same answers, in the new scale
    moved = apply_temperature(probabilities, new["temperature"] / 1.5)
    assert [subtype_label(RULE, p) for p in probabilities] == [subtype_label(new, p) for p in moved]
    card = (result.folder / "model_card.md").read_text()
    assert f"subtype temperature {new['temperature']:.3f}" in card and "re-fitted on a site sample" in card


def test_a_sample_without_subtypes_keeps_the_temperature_and_says_why(headed_run, site, tmp_path, capsys):
    assert main(["calibrate", str(headed_run), "--data", str(site / "plain.csv"), "--out", str(tmp_path / "v"),
                 "--bootstrap", "100"]) == 0
    printed = capsys.readouterr().out
    assert ("subtype temperature 1.500: the model's own (1.500): the sample names the subtype of 0 bacterial and "
            "0 viral PNEUMONIA patients, and a fit needs at least 20 of each") in printed
    assert read_meta(tmp_path / "v").subtype == RULE
    assert "the sample names the subtype of 0 bacterial" in (tmp_path / "v" / "model_card.md").read_text()


def test_a_model_without_a_head_has_no_subtype_line(tiny_run, site, tmp_path, capsys):
    assert main(["calibrate", str(tiny_run), "--data", str(site / "plain.csv"), "--out", str(tmp_path / "v"),
                 "--bootstrap", "50"]) == 0
    assert "subtype" not in capsys.readouterr().out
    assert "subtype" not in json.loads((tmp_path / "v" / "calibration.json").read_text())
