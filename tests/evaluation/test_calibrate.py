"""Site calibration: a new model version fitted on a site's labelled sample; the original never changes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pneumoscan.cli import main
from pneumoscan.errors import DatasetError
from pneumoscan.evaluation.calibrate import calibrate, fit_site_calibration
from pneumoscan.models import read_meta
from pneumoscan.provenance import sha256_file


def test_temperature_is_recovered_and_the_threshold_meets_the_target_sensitivity():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, 4000)
    labels = (rng.random(4000) < 1 / (1 + np.exp(-logits / 2.0))).astype(int)  # true temperature 2
    raw = 1 / (1 + np.exp(-logits))
    fitted = fit_site_calibration(labels, raw, [str(i) for i in range(4000)], target_sensitivity=0.9, resamples=200)
    assert fitted.temperature == pytest.approx(2.0, rel=0.1)
    low, high = fitted.threshold_interval
    assert low <= fitted.threshold <= high
    assert fitted.sensitivity == pytest.approx(0.9, abs=0.01)
    assert (fitted.normal, fitted.pneumonia) == (int((labels == 0).sum()), int(labels.sum()))


def test_a_sample_with_one_class_is_refused_with_a_clear_error():
    with pytest.raises(DatasetError, match="only PNEUMONIA images.*both classes"):
        fit_site_calibration(np.ones(10), np.linspace(0.1, 0.9, 10), [str(i) for i in range(10)])


@pytest.mark.usefixtures("no_figures")
def test_calibrate_writes_a_new_version_and_evaluate_reports_both(tiny_run, tiny_data, tmp_path):
    model_file = tiny_run / "model.safetensors"
    before = sha256_file(model_file)
    original = read_meta(tiny_run)
    result = calibrate(tiny_run, tiny_data / "test", target_sensitivity=0.9, out=tmp_path / "site", resamples=200)
    assert sha256_file(model_file) == before  # the original is only read
    meta = read_meta(result.folder)
    record = json.loads((result.folder / "calibration.json").read_text())
    assert meta.threshold == pytest.approx(result.calibration.threshold)
    assert meta.temperature == pytest.approx(result.calibration.temperature)
    assert record["images"] == 24 and record["normal"] == 12 and record["pneumonia"] == 12
    assert record["original_threshold"] == pytest.approx(original.threshold)
    assert meta.provenance["calibration"]["data"] == str((tiny_data / "test").resolve())
    card = (result.folder / "model_card.md").read_text()
    assert "not" in card.lower() and "diagnos" in card.lower()
    assert "how the threshold was chosen: site calibration on 24 images" in card

    # The calibrated version really scores with its new temperature: same ranking, other probabilities.
    import pneumoscan

    files = sorted((tiny_data / "test").rglob("*.png"))[:6]
    old = np.array([p.probability for p in pneumoscan.load(tiny_run).predict(files)])
    new = np.array([p.probability for p in pneumoscan.load(result.folder).predict(files)])
    assert np.array_equal(np.argsort(old), np.argsort(new))
    expected = 1 / (1 + np.exp(-np.log(old / (1 - old)) / meta.temperature))
    assert new == pytest.approx(expected, abs=1e-5)

    code = main(["evaluate", str(result.folder), "--data", str(tiny_data), "--split", "test", "--bootstrap", "50",
                 "--gallery", "0", "--out", str(tmp_path / "report")])
    assert code == 0
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert set(report["metrics"]["at"]) >= {"stored", "original"}
    assert report["operating_points"]["stored"]["threshold"] == pytest.approx(meta.threshold)
    assert report["site_calibration"]["images"] == 24


def test_calibrate_cli_refuses_a_one_class_sample_naming_the_data(tiny_run, tiny_data, tmp_path, capsys):
    site = tmp_path / "normals.csv"
    normals = sorted((tiny_data / "test" / "NORMAL").iterdir())
    site.write_text("path,label\n" + "".join(f"{f},0\n" for f in normals))
    code = main(["calibrate", str(tiny_run), "--data", str(site)])
    err = capsys.readouterr().err
    assert code == 2
    assert str(site) in err and f"only NORMAL images ({len(normals)})" in err
    assert not (tiny_run / "calibrated").exists()
