"""End to end: a tiny saved model evaluated on a small synthetic split; the report against scikit-learn."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from sklearn import metrics as skm

import pneumoscan
from helpers.fake_runs import make_run
from pneumoscan.cli import main
from pneumoscan.config_files import load_config
from pneumoscan.errors import ConfigError, DatasetError
from pneumoscan.evaluation import EvaluateConfig, compare, evaluate
from pneumoscan.evaluation.operating import apply_temperature
from pneumoscan.models.artifact import read_meta
from pneumoscan.provenance import DISCLAIMER, sha256_file


def run_eval(models, data, out, **options):
    # Small bootstrap and no Grad-CAM gallery unless a test asks: the suite must stay fast on 2 cores.
    options = {"bootstrap": 200, "gallery": 0, **options}
    return evaluate(EvaluateConfig(models=[str(m) for m in models], data=str(data), out=str(out), **options))


def predictions(folder: Path) -> dict[str, dict[str, str]]:
    with open(folder / "predictions.csv", newline="") as fh:
        return {row["path"]: row for row in csv.DictReader(fh)}


@pytest.fixture(scope="module")
def report(tiny_run, tiny_data, tmp_path_factory):
    return run_eval([tiny_run], tiny_data, tmp_path_factory.mktemp("report"), calibrate=True, gallery=4)


def test_report_metrics_equal_scikit_learn_on_the_written_predictions(report):
    rows = list(predictions(report.folder).values())
    y = np.array([int(r["label"]) for r in rows])
    p = np.array([float(r["calibrated_probability"]) for r in rows])
    at = report.report["metrics"]["at"]
    free = report.report["metrics"]["threshold_free"]
    for name, op in report.report["operating_points"].items():
        pred = (p >= op["threshold"]).astype(int)
        assert at[name]["sensitivity"]["value"] == pytest.approx(skm.recall_score(y, pred), abs=1e-5)
        assert at[name]["specificity"]["value"] == pytest.approx(skm.recall_score(y, pred, pos_label=0), abs=1e-5)
        assert at[name]["balanced_accuracy"]["value"] == pytest.approx(skm.balanced_accuracy_score(y, pred), abs=1e-5)
        (tn, fp), (fn, tp) = skm.confusion_matrix(y, pred)
        assert report.report["confusion_matrix"][name] == {"tn": tn, "fp": fp, "fn": fn, "tp": tp}
    assert free["roc_auc"]["value"] == pytest.approx(skm.roc_auc_score(y, p), abs=1e-5)
    assert free["brier"]["value"] == pytest.approx(skm.brier_score_loss(y, p), abs=1e-5)
    for entry in [*free.values(), *at["stored"].values()]:
        assert None not in (entry["low"], entry["value"], entry["high"]), entry  # both classes: all defined
        assert entry["low"] - 1e-9 <= entry["value"] <= entry["high"] + 1e-9, entry


@pytest.mark.usefixtures("no_figures")
def test_evaluation_never_changes_the_stored_threshold_and_tta_averages_the_flip(tiny_data, tmp_path):
    run = make_run(tmp_path / "run", tiny_data, threshold=0.3)
    before = sha256_file(run / "model.safetensors"), (run / "model.json").read_text()
    plain = run_eval([run], tiny_data, tmp_path / "plain")
    calibrated = run_eval([run], tiny_data, tmp_path / "calibrated", calibrate=True, tta=True)
    assert (sha256_file(run / "model.safetensors"), (run / "model.json").read_text()) == before
    # TTA: the raw probability is the mean over the image and its horizontal flip.
    tta = predictions(calibrated.folder)
    model = pneumoscan.load(run)
    for path in sorted(tta)[:3]:
        image = model.preprocess(path)[None]
        expected = (model.predict_proba(image)[0] + model.predict_proba(image[..., ::-1].copy())[0]) / 2
        assert float(tta[path]["probability"]) == pytest.approx(float(expected), abs=2e-6)
    assert read_meta(run).threshold == 0.3
    assert plain.report["operating_points"]["stored"]["threshold"] == 0.3
    # With temperature scaling the threshold moves with the probabilities: the same logit cut.
    temperature = calibrated.report["calibration"]["temperature"]
    assert calibrated.report["operating_points"]["stored"]["threshold"] == pytest.approx(
        float(apply_temperature(np.array([0.3]), temperature)[0]))


@pytest.mark.usefixtures("no_figures")
def test_thresholds_and_temperature_do_not_depend_on_the_evaluated_split(tiny_run, tiny_data, tmp_path):
    # The same run evaluated on two different splits: everything chosen on validation is identical.
    on_test = run_eval([tiny_run], tiny_data, tmp_path / "test", split="test", calibrate=True, tta=True)
    on_train = run_eval([tiny_run], tiny_data, tmp_path / "train", split="train", calibrate=True, tta=True)
    assert on_test.report["operating_points"] == on_train.report["operating_points"]
    assert on_test.report["calibration"]["temperature"] == on_train.report["calibration"]["temperature"]
    # ... and evaluating the training split is flagged loudly as leakage.
    assert any(w.startswith("LEAKAGE") and "train" in w for w in on_train.report["warnings"])
    assert not any(w.startswith("LEAKAGE") for w in on_test.report["warnings"])
    assert "LEAKAGE" in (tmp_path / "train" / "report.md").read_text()


@pytest.mark.usefixtures("no_figures")
def test_operating_points_stored_in_the_model_are_applied_as_is(tiny_data, tmp_path):
    stored = {"youden": 0.41, "sens95": 0.22, "spec95": 0.77}
    run = make_run(tmp_path / "run-ops", tiny_data, threshold=0.33, operating_points=stored)
    result = run_eval([run], tiny_data, tmp_path / "r")
    assert {k: v["threshold"] for k, v in result.report["operating_points"].items()} == {"stored": 0.33, **stored}


@pytest.mark.usefixtures("no_figures")
def test_ensemble_averages_the_members_probabilities(tiny_run, tiny_data, tmp_path):
    other = make_run(tmp_path / "run-b", tiny_data, seed=1)
    single_a = predictions(run_eval([tiny_run], tiny_data, tmp_path / "a").folder)
    single_b = predictions(run_eval([other], tiny_data, tmp_path / "b").folder)
    ensemble = predictions(run_eval([tiny_run, other], tiny_data, tmp_path / "ab").folder)
    for path, row in ensemble.items():
        expected = (float(single_a[path]["probability"]) + float(single_b[path]["probability"])) / 2
        assert float(row["probability"]) == pytest.approx(expected, abs=2e-6)


@pytest.mark.usefixtures("no_figures")
def test_a_corrupt_image_is_skipped_and_reported(tiny_run, tiny_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_data / "test", data / "test")
    (data / "test" / "NORMAL" / "IM-9999-0001.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    result = run_eval([tiny_run], data, tmp_path / "r")
    unreadable = result.report["data"]["unreadable"]
    assert [Path(u["path"]).name for u in unreadable] == ["IM-9999-0001.png"]
    assert result.report["data"]["images"] == 24
    assert any("could not be decoded" in w for w in result.report["warnings"])


def test_report_files_hold_every_figure_and_the_disclaimer(report):
    data = json.loads(report.json.read_text())
    for key in ("metrics", "confusion_matrix", "operating_points", "bootstrap", "calibration", "data",
                "config", "versions", "models", "validation", "leakage"):
        assert data[key] is not None, key
    assert data["disclaimer"] == DISCLAIMER
    assert data["bootstrap"] == {**data["bootstrap"], "resamples": 200, "seed": 0, "unit": "patient"}
    assert set(data["metrics"]["at"]["stored"]) == {"accuracy", "sensitivity", "specificity", "ppv", "npv", "f1",
                                                    "balanced_accuracy"}
    assert set(data["metrics"]["threshold_free"]) == {"roc_auc", "pr_auc", "brier", "log_loss", "ece"}
    assert set(data["plots"]) == {"roc", "precision_recall", "reliability", "confusion_matrix",
                                  "score_histograms", "training_curves"}
    for rel in data["plots"].values():
        assert (report.folder / rel).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert DISCLAIMER in report.markdown.read_text()
    page = report.html.read_text()
    assert DISCLAIMER in page
    assert "http://" not in page and "https://" not in page  # opens offline: nothing outside the file
    assert page.count('src="data:image/png;base64,') == len(data["plots"]) + len(data["gallery"] or [])


def test_saved_config_reloads_to_the_same_options(report):
    assert load_config(EvaluateConfig, report.folder / "config.yaml") == EvaluateConfig(**report.report["config"])


def test_gallery_shows_the_worst_errors_at_the_stored_threshold(report):
    rows = list(predictions(report.folder).values())
    threshold = report.report["operating_points"]["stored"]["threshold"]
    p = {r["path"]: float(r["calibrated_probability"]) for r in rows}
    negatives_called = sorted((p[r["path"]] for r in rows if r["label"] == "0" and p[r["path"]] >= threshold),
                              reverse=True)
    positives_missed = sorted(p[r["path"]] for r in rows if r["label"] == "1" and p[r["path"]] < threshold)
    gallery = report.report["gallery"]
    shown_fp = [g["probability"] for g in gallery if g["kind"] == "false positive"]
    shown_fn = [g["probability"] for g in gallery if g["kind"] == "false negative"]
    assert shown_fp == pytest.approx(negatives_called[:4], abs=1e-6)
    assert shown_fn == pytest.approx(positives_missed[:4], abs=1e-6)
    assert shown_fp or shown_fn  # the tiny untrained model makes mistakes on this split
    for item in gallery:
        assert (report.folder / item["image"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_calibrate_without_validation_data_is_a_clear_error(tiny_run, tiny_data, tmp_path):
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(tiny_run / "model.safetensors", alone / "model.safetensors")
    with pytest.raises(ConfigError, match="--calibrate needs"):
        run_eval([alone / "model.safetensors"], tiny_data, tmp_path / "r", calibrate=True)


def test_a_missing_split_names_the_ones_present_and_leaves_no_folder(tiny_run, tiny_data, tmp_path):
    with pytest.raises(DatasetError, match="no 'holdout' split; it has train, val, test"):
        run_eval([tiny_run], tiny_data, tmp_path / "r", split="holdout")
    assert not (tmp_path / "r").exists()  # no half-written report folder is left behind


@pytest.mark.usefixtures("no_figures")
def test_cli_evaluate_then_compare_side_by_side(tiny_run, tiny_data, tmp_path, capsys):
    other = make_run(tmp_path / "run-b", tiny_data, seed=2, threshold=0.4)
    for run in (tiny_run, other):
        code = main(["evaluate", str(run), "--data", str(tiny_data), "--bootstrap", "50", "--seed", "3",
                     "--gallery", "0"])
        assert code == 0
    out = capsys.readouterr().out
    assert "report:" in out and DISCLAIMER in out
    md = tmp_path / "compare.md"
    assert main(["compare", str(tiny_run), str(other), "--markdown", str(md)]) == 0
    table = capsys.readouterr().out
    assert "Sensitivity (recall)" in table and tiny_run.name in table and "run-b" in table
    assert "0.4000" in table and "0.5000" in table  # each run's own stored threshold
    text = md.read_text()
    assert DISCLAIMER in text and text.count("| ROC-AUC |") == 1
    result = compare([tiny_run, other])
    assert result.header == ["metric", tiny_run.name, "run-b"]


def test_cli_reports_user_errors_on_one_line_with_exit_code_2(tiny_run, tmp_path, capsys):
    assert main(["evaluate", str(tiny_run), "--data", str(tmp_path / "nowhere")]) == 2
    assert main(["compare", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("pneumoscan: error:") for line in err)


def test_compare_warns_when_reports_were_made_on_different_data(report, tmp_path):
    data = json.loads(report.json.read_text())
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "report.json").write_text(json.dumps(data))
    data["data"]["fingerprint"] = "0" * 16
    data["warnings"] = ["LEAKAGE: 3 evaluated images and 2 patients were in the run's train split; ..."]
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "report.json").write_text(json.dumps(data))
    result = compare([tmp_path / "a", tmp_path / "b" / "report.json"])
    assert any("different data" in note for note in result.notes)
    run_id = data["models"][0]["run_id"]
    assert result.header == ["metric", f"{run_id} (a)", f"{run_id} (b)"]  # one run twice: told apart
    assert any(note.startswith(f"{result.header[2]}: LEAKAGE") for note in result.notes)
    assert result.rows[2][1] == result.rows[2][2]  # same figures, side by side


def test_report_sets_its_figures_beside_the_in_distribution_and_published_ones(report, tiny_run):
    data = json.loads(report.json.read_text())
    own, meta = data["context"]["in_distribution"], read_meta(tiny_run)
    assert (own["roc_auc"], own["sensitivity"], own["specificity"]) == (
        meta.val_metrics["auc"], meta.val_metrics["sensitivity"], meta.val_metrics["specificity"])
    # The synthetic test split is named like the Kermany files: the published figures are shown as context.
    assert any(row["source"].startswith("Kermany et al. 2018") for row in data["context"]["published"])
    for text in (report.markdown.read_text(), report.html.read_text()):
        assert "In context" in text and "Kermany et al. 2018" in text and "this evaluation, stored threshold" in text


def test_published_figures_are_shown_only_for_kermany_named_test_images():
    from pneumoscan.evaluation.context import is_kermany_test

    kermany = ["t/NORMAL/IM-0001-0001.jpeg", "t/PNEUMONIA/person1_bacteria_1.jpeg", "t/NORMAL/NORMAL2-IM-0007-0001.jpeg"]
    assert is_kermany_test(kermany, "test", "data")
    assert is_kermany_test(kermany, "all", "chest_xray/test")
    assert not is_kermany_test(kermany, "train", "data")
    assert not is_kermany_test([*kermany, "t/NORMAL/scan_0042.png"], "test", "data")
    assert not is_kermany_test([], "test", "data")
