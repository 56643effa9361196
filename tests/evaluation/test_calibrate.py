"""Site calibration: a new model version fitted on a site's labelled sample; the original never changes,
and a small or easy sample cannot make the model worse."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from helpers.fake_runs import make_dataset, make_run
from pneumoscan.cli import main
from pneumoscan.errors import DatasetError
from pneumoscan.evaluation.calibrate import MIN_PER_CLASS, calibrate, fit_site_calibration
from pneumoscan.models import read_meta
from pneumoscan.provenance import sha256_file


def _sigmoid(z):
    return 1 / (1 + np.exp(-np.asarray(z, dtype=np.float64)))


def _ids(n: int) -> list[str]:
    return [str(i) for i in range(n)]


def test_a_perfectly_separable_sample_is_reported_not_obeyed():
    # 20 + 20 images that the model separates perfectly, as a good model often does on easy cases.
    rng = np.random.default_rng(1)
    labels = np.repeat([0, 1], 20)
    logits = np.where(labels == 1, rng.uniform(1.0, 6.0, 40), rng.uniform(-6.0, -1.0, 40))
    fitted = fit_site_calibration(labels, _sigmoid(logits), _ids(40), target_sensitivity=0.95, resamples=300)
    # The temperature is the model's own: a separable sample would drive it to 0 (probabilities 0 or 1).
    assert fitted.temperature == pytest.approx(1.0)
    assert _sigmoid(logits / fitted.temperature).min() > 0.001 and _sigmoid(logits / fitted.temperature).max() < 0.999
    # The threshold is the model's own, not the second-lowest pneumonia score of the sample.
    assert fitted.threshold == pytest.approx(0.5) and fitted.threshold_source == "model"
    assert fitted.separable
    assert any("perfectly separated" in note for note in fitted.notes)
    assert "too few PNEUMONIA patients near the boundary" in fitted.threshold_reason
    low, high = fitted.threshold_interval
    assert 0 < low <= fitted.threshold_estimate <= high < 1


def test_a_sample_whose_pneumonia_images_all_score_above_099_keeps_a_usable_threshold():
    rng = np.random.default_rng(2)
    labels = np.repeat([0, 1], 20)
    probs = np.where(labels == 1, rng.uniform(0.991, 0.9995, 40), rng.uniform(0.01, 0.9, 40))
    probs[:3] = [0.992, 0.995, 0.997]  # three normals among them: not separable, the temperature is fitted
    fitted = fit_site_calibration(labels, probs, _ids(40), target_sensitivity=0.95, resamples=300)
    # The decision on the model's own probability, whatever the new temperature: not "above 0.99 only".
    t = fitted.threshold
    assert _sigmoid(np.log(t / (1 - t)) * fitted.temperature) < 0.99 and t < 0.99
    assert 0.5 <= fitted.temperature <= 2.0  # within [0.5, 2] x the model's own (1)
    assert fitted.threshold == pytest.approx(0.5) and fitted.threshold_source == "model"
    assert not fitted.separable and fitted.pneumonia_at_model_threshold == 20
    # With a model of its own temperature and threshold: 0.4 at temperature 0.7, in the new probability space.
    scaled = fit_site_calibration(labels, probs, _ids(40), target_sensitivity=0.95, resamples=300,
                                  model_temperature=0.7, model_threshold=0.4)
    assert 0.35 <= scaled.temperature <= 1.4
    assert scaled.threshold == pytest.approx(_sigmoid(np.log(0.4 / 0.6) * 0.7 / scaled.temperature))


def test_a_sample_below_the_minimum_per_class_is_refused_naming_the_minimum(tiny_run, tmp_path, capsys):
    site = make_dataset(tmp_path / "site", {"test": 5})
    code = main(["calibrate", str(tiny_run), "--data", str(site / "test")])
    err = capsys.readouterr().err
    assert code == 2
    assert f"at least {MIN_PER_CLASS} patients of each class" in err
    assert "5 NORMAL and 5 PNEUMONIA images of 3 and 3 patients" in err
    assert str(site / "test") in err and len(err.strip().splitlines()) == 1
    assert not (tiny_run / "calibrated").exists()


def test_the_threshold_is_lowered_where_the_sample_shows_the_model_misses_the_target():
    rng = np.random.default_rng(3)
    labels = np.repeat([0, 1], [40, 40])
    # 12 of 40 pneumonia images score below the model's threshold 0.5: sensitivity 0.70 there.
    logits = np.concatenate([rng.uniform(-5, -1.5, 40), rng.uniform(-1.2, -0.2, 12), rng.uniform(0.2, 4, 28)])
    fitted = fit_site_calibration(labels, _sigmoid(logits), _ids(80), target_sensitivity=0.95, resamples=300)
    assert fitted.threshold_source == "site" and "misses sensitivity 0.95" in fitted.threshold_reason
    assert fitted.threshold < 0.5 and fitted.threshold == pytest.approx(fitted.threshold_estimate)
    assert fitted.sensitivity >= 0.95
    # Interpolated between the classes' scores: the threshold lies strictly between two sample scores.
    z = np.log(fitted.threshold / (1 - fitted.threshold)) * fitted.temperature
    assert not np.isclose(logits, z).any()


def test_the_threshold_is_raised_only_as_far_as_a_large_sample_still_shows_the_target():
    rng = np.random.default_rng(4)
    labels = np.repeat([0, 1], [100, 150])
    logits = np.concatenate([rng.uniform(-4, 1.5, 100), rng.uniform(2.0, 6, 150)])  # sensitivity 1.0 at 0.5
    fitted = fit_site_calibration(labels, _sigmoid(logits), _ids(250), target_sensitivity=0.9, resamples=300)
    assert fitted.threshold_source == "site" and fitted.threshold > 0.5
    from scipy.stats import binomtest

    kept = int((_sigmoid(logits[labels == 1] / fitted.temperature) >= fitted.threshold).sum())
    assert binomtest(kept, 150).proportion_ci(confidence_level=0.9).low >= 0.9
    # 20 pneumonia images could not show it: the same model's threshold is kept on 20 + 20 of them.
    small = np.concatenate([np.arange(20), 100 + np.arange(20)])
    kept_small = fit_site_calibration(labels[small], _sigmoid(logits[small]), _ids(40), target_sensitivity=0.9,
                                      resamples=300)
    assert kept_small.threshold_source == "model" and "needs at least 29 PNEUMONIA patients" in kept_small.threshold_reason


def test_the_temperature_is_fitted_within_its_bounds_around_the_models_own():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, 4000)
    labels = (rng.random(4000) < _sigmoid(logits / 1.5)).astype(int)  # true temperature 1.5
    fitted = fit_site_calibration(labels, _sigmoid(logits), _ids(4000), target_sensitivity=0.9, resamples=100)
    assert fitted.temperature == pytest.approx(1.5, rel=0.1)
    too_hot = fit_site_calibration(labels, _sigmoid(logits), _ids(4000), resamples=100, model_temperature=0.25)
    assert too_hot.temperature == pytest.approx(0.5, rel=1e-3)  # the bound, 2 x the model's own
    assert "at its bound" in too_hot.temperature_note


def test_a_sample_with_one_class_is_refused_with_a_clear_error():
    with pytest.raises(DatasetError, match="only PNEUMONIA images.*both classes, at least 20 patients"):
        fit_site_calibration(np.ones(30), np.linspace(0.1, 0.9, 30), _ids(30))


def test_a_sample_the_model_ranks_backwards_is_refused():
    labels = np.repeat([0, 1], 20)
    with pytest.raises(DatasetError, match="no better than chance"):
        fit_site_calibration(labels, np.where(labels == 1, 0.2, 0.8), _ids(40))


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """A site's images: 50 + 50 under test/ (2 per patient), and a 40 + 40 calibration sample of them (20 + 20
    patients, the least calibrate accepts)."""
    root = make_dataset(tmp_path_factory.mktemp("site"), {"test": 50}, start=50)
    files = sorted((root / "test" / "NORMAL").iterdir())[:40] + sorted((root / "test" / "PNEUMONIA").iterdir())[:40]
    (root / "sample.csv").write_text("path,label\n" + "".join(f"{f},{int(f.parent.name == 'PNEUMONIA')}\n"
                                                             for f in files))
    return root


@pytest.mark.usefixtures("no_figures")
def test_calibrate_writes_a_new_version_and_evaluate_reports_both_without_the_sample(tiny_data, site, tmp_path,
                                                                                    capsys):
    tiny_run = make_run(tmp_path / "runs" / "run-b", tiny_data, threshold=0.5)
    model_file = tiny_run / "model.safetensors"
    before = sha256_file(model_file)
    original = read_meta(tiny_run)
    out = tiny_run / "calibrated" / "sample-1"
    result = calibrate(tiny_run, site / "sample.csv", target_sensitivity=0.9, out=out, resamples=200)
    assert sha256_file(model_file) == before  # the original is only read
    meta = read_meta(result.folder)
    record = json.loads((result.folder / "calibration.json").read_text())
    assert meta.threshold == pytest.approx(result.calibration.threshold)
    assert meta.temperature == pytest.approx(result.calibration.temperature)
    assert record["images"] == 80 and record["normal"] == 40 and record["pneumonia"] == 40
    assert record["normal_patients"] == record["pneumonia_patients"] == 20 and record["patients"] == 40
    nothing = {"duplicates": 0, "out_of_scope": 0, "unreadable": 0}
    assert meta.provenance["calibration"]["excluded"] == nothing  # counts in the model file, names beside it
    assert {kind: listing["count"] for kind, listing in record["excluded"].items()} == nothing
    assert record["training_images_checked"] == str(tiny_run.resolve() / "split.csv")
    assert len(record["sample"]) == 80 and record["original_run"] == str(tiny_run.resolve())
    assert record["original_threshold"] == pytest.approx(original.threshold)
    assert meta.provenance["calibration"]["data"] == str((site / "sample.csv").resolve())
    card = (result.folder / "model_card.md").read_text()
    assert "not" in card.lower() and "diagnos" in card.lower()
    assert "how the threshold was chosen: site calibration on 80 images" in card
    assert record["threshold_reason"] in card

    # The calibrated version really scores with its new temperature: same ranking, other probabilities.
    import pneumoscan

    files = sorted((site / "test").rglob("*.png"))[:6]
    old = np.array([p.probability for p in pneumoscan.load(tiny_run).predict(files)])
    new = np.array([p.probability for p in pneumoscan.load(result.folder).predict(files)])
    assert np.array_equal(np.argsort(old), np.argsort(new))
    expected = 1 / (1 + np.exp(-np.log(old / (1 - old)) * original.temperature / meta.temperature))
    assert new == pytest.approx(expected, abs=1e-5)

    capsys.readouterr()
    code = main(["evaluate", str(result.folder), "--data", str(site), "--split", "test", "--bootstrap", "50",
                 "--gallery", "0", "--out", str(tmp_path / "report")])
    assert code == 0
    printed = capsys.readouterr().out
    assert "80 images of the calibration sample and 0 other images of its patients were left out" in printed
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["data"]["images"] == 20 and report["data"]["calibration_sample"]["images"] == 80
    assert set(report["metrics"]["at"]) >= {"stored", "original", "site-estimate"}
    assert report["operating_points"]["stored"]["threshold"] == pytest.approx(meta.threshold)
    assert report["site_calibration"]["images"] == 80
    # The run's split.csv was found through the calibrated version: the leakage check ran.
    assert report["leakage"]["checked"] == [str(tiny_run.resolve() / "split.csv")]

    # Evaluated on its own sample only, it refuses.
    code = main(["evaluate", str(result.folder), "--data", str(site / "sample.csv"), "--split", "all",
                 "--bootstrap", "20", "--gallery", "0", "--out", str(tmp_path / "report-2")])
    assert code == 2 and "calibration sample" in capsys.readouterr().err

    # `pneumoscan models` lists the calibrated version under its run.
    assert main(["models", "--runs", str(tiny_run.parent)]) == 0
    listing = capsys.readouterr().out
    assert f"{tiny_run.name}/sample-1" in listing and "calibrated" in listing


def test_calibrate_cli_prints_why_it_kept_the_models_threshold(tiny_run, site, tmp_path, capsys):
    code = main(["calibrate", str(tiny_run), "--data", str(site / "sample.csv"), "--out", str(tmp_path / "v"),
                 "--bootstrap", "100"])
    out = capsys.readouterr().out
    assert code == 0
    record = json.loads((tmp_path / "v" / "calibration.json").read_text())
    assert record["threshold_reason"] in out and "the sample's own estimate" in out
    assert f"temperature {record['temperature']:.3f}" in out


def test_calibrate_cli_refuses_a_one_class_sample_naming_the_data(tiny_run, tiny_data, tmp_path, capsys):
    site = tmp_path / "normals.csv"
    normals = sorted((tiny_data / "test" / "NORMAL").iterdir())
    site.write_text("path,label\n" + "".join(f"{f},0\n" for f in normals))
    code = main(["calibrate", str(tiny_run), "--data", str(site)])
    err = capsys.readouterr().err
    assert code == 2
    assert str(site) in err and f"only NORMAL images ({len(normals)})" in err
    assert not (tiny_run / "calibrated").exists()


def test_the_bundled_model_is_calibrated_into_runs_default_and_listed(shared_data, tmp_path, monkeypatch, capsys):
    sample = tmp_path / "site.csv"
    test = shared_data / "chest_xray" / "test"
    # 22 a class: the gate may refuse a tightly framed radiograph, and calibrate needs 20 patients a class
    files = _first_patients(test / "NORMAL", 22) + _first_patients(test / "PNEUMONIA", 22)
    sample.write_text("path,label\n" + "".join(f"{f},{int(f.parent.name == 'PNEUMONIA')}\n" for f in files))
    monkeypatch.chdir(tmp_path)
    assert main(["calibrate", "--data", str(sample), "--bootstrap", "100"]) == 0
    out = capsys.readouterr().out
    versions = list((tmp_path / "runs" / "default" / "calibrated").iterdir())
    assert len(versions) == 1 and f"new model version: {Path('runs') / 'default' / 'calibrated' / versions[0].name}" in out
    record = json.loads((versions[0] / "calibration.json").read_text())
    assert record["original_run"] is None and record["threshold"] < 0.99
    # A separable sample (as these easy first images are for a good model) is said in all three places.
    card = (versions[0] / "model_card.md").read_text()
    assert record["separable"] == ("perfectly separated" in card) == ("perfectly separated" in out)
    assert record["separable"] == any("perfectly separated" in note for note in record["notes"])
    assert main(["models"]) == 0
    listing = capsys.readouterr().out
    assert f"default/{versions[0].name}" in listing and "calibrated" in listing


def _first_patients(folder: Path, n: int) -> list[Path]:
    """One image of each of the first ``n`` patients (Kermany names) of ``folder``."""
    from pneumoscan.data import kermany_patient_id

    chosen: dict[str, Path] = {}
    for f in sorted(folder.glob("*.jpeg")):
        chosen.setdefault(kermany_patient_id(f.stem), f)
        if len(chosen) == n:
            break
    return list(chosen.values())


def _manifest(path: Path, rows: list[tuple[Path, int, str | None]]) -> Path:
    path.write_text("path,label,patient_id\n" + "".join(f"{f},{label},{patient or ''}\n" for f, label, patient in rows))
    return path


def _copies(original: Path, folder: Path, n: int) -> list[Path]:
    """``n`` byte-identical copies of ``original`` under other names (as a careless export or a forger makes)."""
    folder.mkdir(parents=True, exist_ok=True)
    copies = [folder / f"copy-{i:02d}{original.suffix}" for i in range(n)]
    for copy in copies:
        copy.write_bytes(original.read_bytes())
    return copies


def test_twenty_copies_of_one_image_per_class_are_two_patients_and_refused(tiny_run, site, tmp_path, capsys):
    normal = sorted((site / "test" / "NORMAL").iterdir())[0]
    pneumonia = sorted((site / "test" / "PNEUMONIA").iterdir())[0]
    # Each copy under a patient id of its own: only the images themselves show they are one radiograph.
    rows = [(f, 0, f"n{i}") for i, f in enumerate(_copies(normal, tmp_path / "n", 20))]
    rows += [(f, 1, f"p{i}") for i, f in enumerate(_copies(pneumonia, tmp_path / "p", 20))]
    code = main(["calibrate", str(tiny_run), "--data", str(_manifest(tmp_path / "copies.csv", rows)),
                 "--out", str(tmp_path / "v")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "1 NORMAL and 1 PNEUMONIA images of 1 and 1 patients" in err
    assert "38 duplicate(s) of another image of the sample" in err and not (tmp_path / "v").exists()


def test_copies_added_to_an_honest_sample_move_nothing_and_are_listed(tiny_run, site, tmp_path):
    honest = calibrate(tiny_run, site / "sample.csv", out=tmp_path / "honest", resamples=200)
    rows = [(Path(line.split(",")[0]), int(line.split(",")[1]), None)
            for line in (site / "sample.csv").read_text().splitlines()[1:]]
    # 20 copies of one NORMAL and of one PNEUMONIA image of the sample, the PNEUMONIA one the lowest-scoring.
    import pneumoscan

    positives = [f for f, label, _ in rows if label == 1]
    scores = [p.probability for p in pneumoscan.load(tiny_run).predict(positives)]
    missed = positives[int(np.argmin(scores))]
    copies = [(f, 0, "copied-normal") for f in _copies(rows[0][0], tmp_path / "n", 20)]
    copies += [(f, 1, "copied-pneumonia") for f in _copies(missed, tmp_path / "p", 20)]
    # One of them a near duplicate, not a byte copy: re-encoded brighter.
    from PIL import Image

    near = tmp_path / "p" / "re-encoded.jpeg"
    Image.open(missed).point(lambda v: min(255, v + 6)).save(near, quality=85)
    copies.append((near, 1, "copied-pneumonia"))
    steered = calibrate(tiny_run, _manifest(tmp_path / "steered.csv", rows + copies), out=tmp_path / "steered",
                        resamples=200)

    for field in ("threshold", "temperature", "threshold_estimate", "images", "patients"):
        assert getattr(steered.calibration, field) == pytest.approx(getattr(honest.calibration, field)), field
    record = json.loads((tmp_path / "steered" / "calibration.json").read_text())
    assert record["excluded"]["duplicates"]["count"] == 41 and len(record["sample"]) == 80
    hows = {row["how"].split(" (")[0] for row in record["excluded"]["duplicates"]["images"]}
    assert hows == {"identical bytes", "near duplicate"}
    assert any("41 duplicate(s)" in line for line in record["summary"])


def test_one_radiograph_under_both_labels_is_refused(tiny_run, site, tmp_path):
    rows = [(Path(line.split(",")[0]), int(line.split(",")[1]), None)
            for line in (site / "sample.csv").read_text().splitlines()[1:]]
    relabelled = _copies(rows[0][0], tmp_path / "x", 1)[0]
    with pytest.raises(DatasetError, match="same radiograph .identical bytes. under two labels"):
        calibrate(tiny_run, _manifest(tmp_path / "s.csv", [*rows, (relabelled, 1, None)]), out=tmp_path / "v")


def test_images_that_hold_no_radiograph_are_left_out_and_listed_not_fitted(tiny_run, site, tmp_path):
    from PIL import Image

    drawing = np.zeros((256, 256), np.uint8)
    drawing[:, :128], drawing[:, 128:] = 40, 200  # two grey levels: a drawing, not a radiograph
    Image.fromarray(drawing).save(tmp_path / "drawing.png")
    Image.fromarray(drawing.T.copy()).save(tmp_path / "drawing-2.png")
    rows = [(Path(line.split(",")[0]), int(line.split(",")[1]), None)
            for line in (site / "sample.csv").read_text().splitlines()[1:]]
    extra = [(tmp_path / "drawing.png", 1, "d1"), (tmp_path / "drawing-2.png", 0, "d2")]
    result = calibrate(tiny_run, _manifest(tmp_path / "s.csv", rows + extra), out=tmp_path / "v", resamples=100)
    record = json.loads((tmp_path / "v" / "calibration.json").read_text())
    assert result.calibration.images == 80 and len(record["sample"]) == 80
    # Pixels that hold no radiograph are refused as predict refuses them: unreadable as radiographs.
    out = record["excluded"]["unreadable"]
    assert out["count"] == 2 and {Path(r["path"]).name for r in out["images"]} == {"drawing.png", "drawing-2.png"}
    assert all("grey levels" in r["reason"] and "not a radiograph" in r["reason"] for r in out["images"])
    assert any("2 unreadable" in line for line in record["summary"])


def test_the_runs_own_training_or_validation_images_are_refused_copies_included(tiny_run, tiny_data, site,
                                                                                 tmp_path):
    rows = [(Path(line.split(",")[0]), int(line.split(",")[1]), None)
            for line in (site / "sample.csv").read_text().splitlines()[1:]]
    trained = sorted((tiny_data / "train" / "PNEUMONIA").iterdir())[0]
    with pytest.raises(DatasetError, match=r"1 image\(s\) of the sample are the model's own training or validation "
                                           r"images .listed in .*split.csv; e.g. .*a train image"):
        calibrate(tiny_run, _manifest(tmp_path / "a.csv", [*rows, (trained, 1, None)]), out=tmp_path / "v")
    copy = _copies(sorted((tiny_data / "val" / "NORMAL").iterdir())[0], tmp_path / "c", 1)[0]
    with pytest.raises(DatasetError, match="a copy of a val image"):
        calibrate(tiny_run, _manifest(tmp_path / "b.csv", [*rows, (copy, 0, None)]), out=tmp_path / "v")
    assert not (tmp_path / "v").exists()


def test_images_of_one_patient_weigh_as_one_in_the_fit():
    rng = np.random.default_rng(3)
    labels = np.repeat([0, 1], [40, 40])
    logits = np.concatenate([rng.uniform(-5, -1.5, 40), rng.uniform(-1.2, -0.2, 12), rng.uniform(0.2, 4, 28)])
    ids = _ids(80)
    # One more NORMAL and one more missed PNEUMONIA image: once, or twenty times each under the same patient.
    once = fit_site_calibration(np.r_[labels, 0, 1], _sigmoid(np.r_[logits, 1.0, -3.0]), ids + ["n", "p"],
                                resamples=300)
    twenty = fit_site_calibration(np.r_[labels, [0] * 20, [1] * 20], _sigmoid(np.r_[logits, [1.0] * 20, [-3.0] * 20]),
                                  ids + ["n"] * 20 + ["p"] * 20, resamples=300)
    for field in ("threshold", "temperature", "threshold_estimate", "sensitivity_at_model_threshold", "sensitivity"):
        assert getattr(twenty, field) == pytest.approx(getattr(once, field), rel=1e-6), field
    assert twenty.images == 120 and twenty.patients == once.patients == 82
