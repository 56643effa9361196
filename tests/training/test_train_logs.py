"""A training log redirected to a file is fit for scripts: one line per epoch, no progress-bar frames,
no third-party adverts or deprecation notices."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.e2e  # trains a model (in a child process, where the fit guard cannot see it)
def test_train_into_a_file_writes_one_line_per_epoch_and_no_noise(synthetic_dataset, tmp_path):
    log = tmp_path / "train.log"
    command = [sys.executable, "-m", "pneumoscan", "train", "--data", str(synthetic_dataset), "--out",
               str(tmp_path / "runs"), "--image-size", "32", "--epochs", "2", "--batch-size", "8",
               "--val-fraction", "0.3", "--threads", "1"]  # --progress left at its default: on
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    with log.open("w") as fh:
        done = subprocess.run(command, stdout=fh, stderr=subprocess.STDOUT, env=env, timeout=600)
    text = log.read_text(encoding="utf-8")
    assert done.returncode == 0, text
    lines = text.splitlines()
    assert [line.split()[1] for line in lines if line.startswith("epoch ")] == ["1/2", "2/2"], text
    last = next(line for line in lines if line.startswith("epoch 2/2"))
    assert "train_loss" in last and "val_auc" in last
    for noise in ("litlogger", "💡", "v_num", "LeafSpec", "is deprecated", "GPU available", "\r", "it/s]"):
        assert noise not in text, f"{noise!r} in the log:\n{text}"
    assert len(text) < 4000, text


def test_the_model_summary_names_the_network_not_only_its_wrapper():
    from lightning.pytorch.utilities.model_summary import summarize

    from pneumoscan.models import build_model
    from pneumoscan.training import TrainConfig
    from pneumoscan.training.console import SUMMARY_DEPTH
    from pneumoscan.training.module import XrayClassifier

    network = build_model("mini-resnet", 32)
    summary = str(summarize(XrayClassifier(network, TrainConfig(image_size=32)), max_depth=SUMMARY_DEPTH))
    assert type(network.network).__name__ in summary  # e.g. MiniResNet, not just PerImageStandardize
