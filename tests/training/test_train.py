"""End-to-end training on tiny synthetic radiographs: the run folder, the model file, resume, errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import pneumoscan
from helpers.synthetic import write_synthetic_image
from pneumoscan.cli import main
from pneumoscan.config_files import load_config
from pneumoscan.errors import ConfigError, DatasetError, ModelFileError
from pneumoscan.models import load_model, read_meta
from pneumoscan.training import TrainConfig, train
from pneumoscan.training.metrics import binary_summary, operating_points

pytestmark = pytest.mark.e2e  # this module trains models

CORRUPT = "IM-0099-0001.png"


def make_dataset(root: Path, patients: int = 12) -> Path:
    """Kermany-style folders: ``patients`` per class with two images each, plus one corrupt file."""
    for i in range(patients):
        write_synthetic_image(root / "train" / "NORMAL" / f"IM-{i:04d}-0001.png", 0, seed=i, size=48)
        write_synthetic_image(root / "train" / "NORMAL" / f"IM-{i:04d}-0002.png", 0, seed=100 + i, size=48)
        write_synthetic_image(root / "train" / "PNEUMONIA" / f"person{500 + i}_bacteria_{i}.png", 1, seed=200 + i,
                              size=48)
        write_synthetic_image(root / "train" / "PNEUMONIA" / f"person{500 + i}_virus_{50 + i}.png", 1,
                              seed=300 + i, size=48)
    (root / "train" / "NORMAL" / CORRUPT).write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return root


def tiny_config(data: Path, out: Path, **overrides) -> TrainConfig:
    # The small from-scratch network keeps these pipeline tests fast; the default network's own path is
    # tested in test_train_imagenet.py.
    options = {"data": str(data), "out": str(out), "model": "mini-resnet", "image_size": 32, "epochs": 2, "batch_size": 8,
               "val_fraction": 0.3, "progress": False, "early_stopping": 0, "threads": 1, **overrides}
    return TrainConfig(**options)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("train")


@pytest.fixture(scope="module")
def dataset(workdir) -> Path:
    return make_dataset(workdir / "data")


@pytest.fixture(scope="module")
def run(workdir, dataset) -> Path:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PNEUMOSCAN_CACHE", str(workdir / "cache"))
        mp.delenv("PNEUMOSCAN_RUN_DIR", raising=False)
        return train(tiny_config(dataset, workdir / "runs", run_name="first"))


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_run_folder_holds_everything_the_contract_lists(run):
    for name in ("config.yaml", "provenance.json", "split.csv", "checkpoints/best.ckpt", "checkpoints/last.ckpt",
                 "logs/csv/metrics.csv", "history.csv", "curves.png", "model.safetensors", "model.json",
                 "val_predictions.csv"):
        assert (run / name).is_file(), name
    assert any((run / "logs" / "tensorboard").glob("events.out.tfevents.*"))
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    provenance = json.loads((run / "provenance.json").read_text())
    assert len(provenance["data_manifest_sha256"]) == 64
    assert provenance["versions"]["torch"] == torch.__version__
    assert provenance["seed"] == 0 and "git_commit" in provenance
    assert "NOT a medical device" in provenance["disclaimer"]
    assert (run.parent / "latest").resolve() == run.resolve()


def test_threshold_and_operating_points_are_chosen_on_the_validation_predictions(run):
    rows = read_csv(run / "val_predictions.csv")
    labels = np.array([int(r["label"]) for r in rows])
    probs = np.array([float(r["probability"]) for r in rows])
    meta = read_meta(run)
    config = meta.provenance["config"]
    expected = operating_points(labels, probs, seed=config["seed"])
    # The stored threshold is the recipe's rule applied to these validation predictions.
    assert meta.threshold == pytest.approx(expected[config["threshold_rule"]], abs=1e-5)
    assert meta.operating_points == pytest.approx(expected, abs=1e-5)
    assert meta.val_metrics["auc"] == pytest.approx(binary_summary(labels, probs, meta.threshold)["auc"])
    assert meta.provenance["data_manifest_sha256"] and meta.provenance["config"]["model"] == "mini-resnet"


def test_saved_model_scores_the_validation_files_as_training_did(run):
    rows = read_csv(run / "val_predictions.csv")
    predictions = pneumoscan.load(run).predict([r["path"] for r in rows])
    assert [p.probability for p in predictions] == pytest.approx([float(r["probability"]) for r in rows], abs=1e-4)


def test_checkpoints_load_weights_only_with_metadata_and_model_prefix(run):
    for name in ("best.ckpt", "last.ckpt"):
        checkpoint = torch.load(run / "checkpoints" / name, map_location="cpu", weights_only=True)
        assert json.loads(checkpoint["pneumoscan"])["name"] == "mini-resnet"
        assert all(k.startswith("model.") for k in checkpoint["state_dict"])
    model, meta = load_model(run / "checkpoints" / "best.ckpt")
    assert meta.image_size == 32 and 0.0 <= meta.threshold <= 1.0 + 1e-9


def test_corrupt_image_is_skipped_and_counted_not_fatal(run):
    provenance = json.loads((run / "provenance.json").read_text())
    assert provenance["skipped_images"]["count"] == 1
    assert CORRUPT in provenance["skipped_images"]["files"][0]
    assert all(CORRUPT not in r["path"] for r in read_csv(run / "split.csv"))


def test_split_never_puts_one_patient_in_two_splits_and_holds_out_test_patients(run):
    rows = read_csv(run / "split.csv")
    splits: dict[str, set[str]] = {}
    for r in rows:
        splits.setdefault(r["patient_id"], set()).add(r["split"])
    assert all(len(s) == 1 for s in splits.values())
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    test_patients = {r["patient_id"] for r in rows if r["split"] == "test"}
    assert {r["label"] for r in rows if r["split"] == "test"} == {"NORMAL", "PNEUMONIA"}  # stratified: both classes
    trained_on = {r["path"] for r in rows if r["split"] != "test"}
    validated = {r["path"] for r in read_csv(run / "val_predictions.csv")}
    assert not validated & {r["path"] for r in rows if r["split"] == "test"}
    assert trained_on.isdisjoint(r["path"] for r in rows if r["patient_id"] in test_patients)


def test_history_has_one_row_per_epoch_for_train_and_validation(run):
    history = read_csv(run / "history.csv")
    assert [int(r["epoch"]) for r in history] == [0, 1]
    for column in ("train_loss", "val_loss", "train_auc", "val_auc", "train_acc", "val_acc", "lr", "wall_s"):
        assert all(r[column] not in ("", "nan") for r in history), column
    assert float(history[1]["wall_s"]) > float(history[0]["wall_s"])


def test_config_yaml_reproduces_the_run(run, workdir, monkeypatch):
    monkeypatch.setenv("PNEUMOSCAN_CACHE", str(workdir / "cache"))
    monkeypatch.delenv("PNEUMOSCAN_RUN_DIR", raising=False)
    assert main(["train", "--config", str(run / "config.yaml"), "--run-name", "again"]) == 0
    again = run.parent / "again"
    assert load_config(TrainConfig, again / "config.yaml") == load_config(TrainConfig, run / "config.yaml").__class__(
        **{**vars(load_config(TrainConfig, run / "config.yaml")), "run_name": "again"})
    first = [float(r["probability"]) for r in read_csv(run / "val_predictions.csv")]
    second = [float(r["probability"]) for r in read_csv(again / "val_predictions.csv")]
    assert second == pytest.approx(first, abs=1e-5)
    assert (run.parent / "latest").resolve() == again.resolve()


def test_resume_continues_a_stopped_run_from_its_last_checkpoint(workdir, dataset, monkeypatch):
    monkeypatch.setenv("PNEUMOSCAN_CACHE", str(workdir / "cache"))
    monkeypatch.delenv("PNEUMOSCAN_RUN_DIR", raising=False)
    stopped = train(tiny_config(dataset, workdir / "runs", epochs=1, run_name="stopped"))
    steps_one_epoch = torch.load(stopped / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    monkeypatch.delenv("PNEUMOSCAN_RUN_DIR", raising=False)
    assert main(["train", "--resume", str(stopped), "--epochs", "2"]) == 0
    last = torch.load(stopped / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 2 * steps_one_epoch  # the optimiser went on, it did not restart
    assert [int(r["epoch"]) for r in read_csv(stopped / "history.csv")] == [0, 1]
    assert json.loads((stopped / "provenance.json").read_text())["resumed_from"].endswith("last.ckpt")


def test_resuming_with_a_checkpoint_of_another_architecture_is_refused(run, workdir, tmp_path):
    other = tmp_path / "other"
    (other / "checkpoints").mkdir(parents=True)
    (other / "config.yaml").write_text((run / "config.yaml").read_text().replace("mini-resnet", "seed-cnn"))
    (other / "checkpoints" / "last.ckpt").write_bytes((run / "checkpoints" / "last.ckpt").read_bytes())
    with pytest.raises(ModelFileError, match="another|cannot resume"):
        train(resume=other)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--model", "no-such-net"], "unknown model 'no-such-net'"),
        (["train", "--data", "/nonexistent/xrays"], "/nonexistent/xrays: no such file or folder"),
        (["train", "--resume", "/nonexistent/run"], "no checkpoint to resume from"),
        (["train", "--val-fraction", "1.5"], "--val-fraction"),
    ],
)
def test_bad_input_is_a_one_line_error_with_exit_code_2(argv, message, capsys, tmp_path):
    assert main([*argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_unknown_model_and_missing_data_raise_the_projects_errors(tmp_path):
    with pytest.raises(ConfigError):
        train(TrainConfig(model="resnet-9000", data=str(tmp_path), out=str(tmp_path)))
    with pytest.raises(DatasetError):
        train(TrainConfig(data=str(tmp_path / "absent"), out=str(tmp_path)))


def test_train_help_ends_with_an_example(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert capsys.readouterr().out.rstrip().splitlines()[-1].strip().startswith("pneumoscan train")


@pytest.mark.slow
def test_training_on_real_radiographs_writes_a_model_that_scores_them(real_subset, tmp_path, monkeypatch):
    monkeypatch.delenv("PNEUMOSCAN_RUN_DIR", raising=False)
    run = train(tiny_config(real_subset, tmp_path / "runs", image_size=64, epochs=1, val_fraction=0.25))
    rows = read_csv(run / "val_predictions.csv")
    assert {r["label"] for r in rows} == {"0", "1"}
    predictions = pneumoscan.load(run).predict([r["path"] for r in rows])
    assert all(p.error is None and p.label in ("NORMAL", "PNEUMONIA") for p in predictions)
    assert [p.probability for p in predictions] == pytest.approx([float(r["probability"]) for r in rows], abs=1e-4)


def test_a_named_run_is_never_overwritten(run, workdir, dataset, monkeypatch):
    monkeypatch.delenv("PNEUMOSCAN_RUN_DIR", raising=False)
    before = (run / "model.safetensors").read_bytes()
    with pytest.raises(ConfigError, match="--resume"):
        train(tiny_config(dataset, workdir / "runs", run_name="first"))
    assert (run / "model.safetensors").read_bytes() == before
