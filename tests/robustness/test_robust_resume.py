"""`kill -9` of a training run mid-epoch, then `--resume`: the run continues from its last checkpoint and
ends with validation metrics that match an uninterrupted run of the same config and seed.

Real processes and a real SIGKILL. A Lightning callback paces the killed run (a short sleep after each
batch, which changes no number) and records which epoch and batch it is in, so the kill lands mid-epoch
after the first ``last.ckpt`` was written. The uninterrupted run and the killed one run side by side.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from sklearn.metrics import roc_auc_score

import pneumoscan
from helpers.corpus import write_good_images

pytestmark = pytest.mark.e2e  # this module trains models

EPOCHS = 8
CHILD = textwrap.dedent('''
    import json, sys, time
    from pathlib import Path
    from lightning.pytorch.callbacks import Callback
    from pneumoscan.training import TrainConfig, train

    spec = json.loads(sys.argv[1])

    class Pace(Callback):
        """Records "epoch batch" after every training batch, then sleeps ``delay`` seconds."""

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            with open(spec["progress"], "a") as fh:
                fh.write(f"{trainer.current_epoch} {batch_idx}\\n")
            time.sleep(spec["delay"])

    if spec.get("resume"):
        train(None, resume=spec["resume"], callbacks=[Pace()])
    else:
        config = TrainConfig(data=spec["data"], model="seed-cnn", image_size=32, epochs=spec["epochs"], batch_size=16,
                             val_fraction=0.25, augment=False, early_stopping=0, seed=0, lr=3e-3, threads=1,
                             out=spec["out"], run_name=spec["name"], progress=False)
        train(config, callbacks=[Pace()])
''')


def _start(spec: dict, log: Path) -> subprocess.Popen:
    # Module-scoped, so set up before the per-test cache isolation of tests/conftest.py: isolate here.
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PNEUMOSCAN_CACHE": str(log.parent / "cache")}
    env.pop("PNEUMOSCAN_RUN_DIR", None)
    return subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(spec)], stdout=log.open("w"),
                            stderr=subprocess.STDOUT, env=env)


def _progress(path: Path) -> list[tuple[int, int]]:
    if not path.exists():
        return []
    return [tuple(map(int, line.split())) for line in path.read_text().splitlines() if line.strip()]


def _history(run: Path) -> list[dict[str, str]]:
    with open(run / "history.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _final_val(run: Path) -> dict[str, float]:
    rows = [r for r in _history(run) if r.get("val_loss") not in (None, "")]
    return {"epoch": int(rows[-1]["epoch"]), "val_loss": float(rows[-1]["val_loss"]),
            "val_acc": float(rows[-1]["val_acc"]), "val_auc": float(rows[-1]["val_auc"])}


@pytest.fixture(scope="module")
def killed_then_resumed(tmp_path_factory) -> dict:
    """Run the reference and the to-be-killed run side by side; kill -9 the latter mid-epoch; resume it."""
    tmp_path = tmp_path_factory.mktemp("kill-resume")
    data = tmp_path / "data"
    # 48 per class: enough that both runs converge, so the comparison is not dominated by the noise
    # of a dozen images (with 16 per class two uninterrupted seeds differ by 0.4 in val loss).
    write_good_images(data / "NORMAL", 0, 48, size=40)
    write_good_images(data / "PNEUMONIA", 1, 48, size=40)
    base = {"data": str(data), "out": str(tmp_path / "runs"), "epochs": EPOCHS}
    killed_progress, reference_progress = tmp_path / "killed.progress", tmp_path / "reference.progress"
    reference = _start({**base, "name": "reference", "progress": str(reference_progress), "delay": 0.0},
                       tmp_path / "reference.log")
    killed = _start({**base, "name": "killed", "progress": str(killed_progress), "delay": 0.25},
                    tmp_path / "killed.log")
    run = tmp_path / "runs" / "killed"
    last = run / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 150
    try:
        # Mid-epoch: the first epoch's checkpoint exists and the second epoch is under way.
        while not (last.exists() and any(epoch >= 1 and batch >= 1 for epoch, batch in _progress(killed_progress))):
            assert killed.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the run never reached its second epoch"
            time.sleep(0.05)
        killed.send_signal(signal.SIGKILL)
        assert killed.wait(30) == -signal.SIGKILL
    finally:
        if killed.poll() is None:
            killed.kill()
        if reference.wait(150) != 0:
            pytest.fail((tmp_path / "reference.log").read_text()[-3000:])
    killed_in = max(epoch for epoch, _ in _progress(killed_progress))
    # What the kill left: a whole checkpoint (written atomically) of the last completed epoch.
    saved_epoch = int(torch.load(last, map_location="cpu", weights_only=True)["epoch"])
    interrupted = not (run / "model.safetensors").exists()
    resumed_progress = tmp_path / "resumed.progress"
    resumed = _start({"resume": str(run), "progress": str(resumed_progress), "delay": 0.0}, tmp_path / "resumed.log")
    if resumed.wait(150) != 0:
        pytest.fail((tmp_path / "resumed.log").read_text()[-3000:])
    return {"run": run, "reference": tmp_path / "runs" / "reference", "saved_epoch": saved_epoch, "data": data,
            "killed_in": killed_in, "interrupted": interrupted,
            "epochs_after": sorted({epoch for epoch, _ in _progress(resumed_progress)})}


@pytest.mark.timeout(300)
def test_training_killed_mid_epoch_resumes_from_last_checkpoint_and_matches_an_uninterrupted_run(
    killed_then_resumed,
) -> None:

    k = killed_then_resumed
    assert k["interrupted"] and k["saved_epoch"] < k["killed_in"]
    # It continued: the first epoch trained after the resume is the one after the checkpoint, up to the end.
    assert k["epochs_after"] == list(range(k["saved_epoch"] + 1, EPOCHS)), k
    provenance = json.loads((k["run"] / "provenance.json").read_text())
    assert provenance["resumed_from"] and Path(provenance["resumed_from"]).name == "last.ckpt"
    # The result matches the uninterrupted run: the checkpoint carries torch's generators, so the batch
    # order, augmentation and dropout after the resume are the ones the uninterrupted run drew (on CPU,
    # bit for bit; the bounds below are the looser promise of the issue).
    ref, got = _final_val(k["reference"]), _final_val(k["run"])
    assert got["epoch"] == ref["epoch"] == EPOCHS - 1, (ref, got)
    assert got["val_loss"] == pytest.approx(ref["val_loss"], rel=1e-5), (ref, got)
    assert abs(got["val_acc"] - ref["val_acc"]) <= 0.05, (ref, got)  # one of the 24 validation images
    assert abs(got["val_auc"] - ref["val_auc"]) <= 0.02, (ref, got)
    # And the two models score all 96 images alike.
    auc = {}
    for name in ("run", "reference"):
        classifier = pneumoscan.load(k[name])
        scored = classifier.predict(sorted(k["data"].rglob("*.png")))
        labels = [int("PNEUMONIA" in r.source) for r in scored]
        auc[name] = roc_auc_score(labels, [r.probability for r in scored])
        assert classifier.meta.name == "seed-cnn"
    assert abs(auc["run"] - auc["reference"]) <= 0.01, auc


def test_a_resumed_run_keeps_the_history_of_the_epochs_before_the_kill(killed_then_resumed) -> None:
    """history.csv (and curves.png) of the resumed run hold every epoch, the ones before the kill included,
    and those match the uninterrupted run exactly (same seed, same data, deterministic on CPU)."""
    k = killed_then_resumed
    rows, ref = _history(k["run"]), _history(k["reference"])
    assert [int(r["epoch"]) for r in rows if r.get("val_loss")] == list(range(EPOCHS))
    for epoch in range(EPOCHS):  # before the kill and after the resume
        assert float(rows[epoch]["val_loss"]) == pytest.approx(float(ref[epoch]["val_loss"]), rel=1e-5)
    assert (k["run"] / "curves.png").is_file()
