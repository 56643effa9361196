"""Distillation's parts without training: the soft target, the teacher's probabilities, its errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import pneumoscan
from pneumoscan.bundled import BUNDLED_DIR
from pneumoscan.cli import main
from pneumoscan.errors import ConfigError, ModelFileError
from pneumoscan.provenance import sha256_file
from pneumoscan.training import TrainConfig
from pneumoscan.training.distill import load_teacher, same_teacher, soft_targets


def test_the_soft_target_mixes_the_teacher_and_the_label_by_the_weight():
    labels = torch.tensor([0.0, 1.0, 1.0, 0.0])
    teacher = torch.tensor([0.2, 0.6, 1.0, 0.0])
    # 0.9 * p + 0.1 * y
    assert torch.allclose(soft_targets(labels, teacher, 0.9), torch.tensor([0.18, 0.64, 1.0, 0.0]))
    assert torch.equal(soft_targets(labels, teacher, 1.0), teacher)
    assert torch.equal(soft_targets(labels, teacher, 0.0), labels)


def test_label_smoothing_softens_the_label_part_only():
    labels, teacher = torch.tensor([0.0, 1.0]), torch.tensor([0.2, 0.6])
    # label 0 -> 0.05, 1 -> 0.95 with smoothing 0.1; the teacher's probability is used as it is
    expected = torch.tensor([0.5 * 0.2 + 0.5 * 0.05, 0.5 * 0.6 + 0.5 * 0.95])
    assert torch.allclose(soft_targets(labels, teacher, 0.5, smoothing=0.1), expected)
    assert torch.allclose(soft_targets(labels, None, 0.9, smoothing=0.1), torch.tensor([0.05, 0.95]))


def test_the_default_teacher_gives_the_bundled_models_calibrated_probability():
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, (6, 128, 128), dtype=np.uint8)
    teacher = load_teacher("default")
    got = teacher(torch.from_numpy(batch).float()[:, None] / 255).numpy()
    assert got == pytest.approx(pneumoscan.load().predict_proba(batch), abs=1e-4)
    (record,) = teacher.record
    assert record["teacher"] == "default" and record["name"] == "efficientnet-lite0" and record["image_size"] == 128
    assert record["sha256"] == sha256_file(BUNDLED_DIR / "model.safetensors")
    assert record["weights"] == "pneumoscan/bundled/model.safetensors"  # no machine's path in a student's file


def test_an_ensemble_teacher_averages_the_probabilities_each_model_gives_at_its_own_size(exported_run):
    images = torch.rand(4, 1, 64, 64)
    teacher = load_teacher(f"default, {exported_run}")
    small = pneumoscan.load(exported_run).torch_module().probabilities(images).reshape(-1)  # 64 px, temperature 1.7
    bundled = pneumoscan.load().torch_module().probabilities(images).reshape(-1)  # resized to 128 px
    assert torch.allclose(teacher(images), (small + bundled) / 2, atol=1e-6)
    assert [r["image_size"] for r in teacher.record] == [128, 64]


def test_the_teacher_stays_frozen_and_in_eval_mode():
    teacher = load_teacher("default")
    teacher.train()
    assert not any(m.training for m in teacher.modules())
    assert not any(p.requires_grad for p in teacher.parameters())
    images = torch.rand(2, 1, 128, 128, requires_grad=True)
    assert not teacher(images).requires_grad


def test_a_bad_teacher_path_is_a_one_line_error_naming_it(tmp_path, capsys):
    missing = tmp_path / "no-such-run"
    with pytest.raises(ModelFileError, match=f"--teacher {missing}: .*no such model file"):
        load_teacher(f"default,{missing}")
    assert main(["train", "--teacher", str(missing), "--data", str(tmp_path), "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(missing) in err and "--teacher" in err
    assert not (tmp_path / "runs").exists()  # nothing written before the teacher was found


def test_the_distill_weight_is_a_share():
    with pytest.raises(ConfigError, match="--distill-weight"):
        TrainConfig(teacher="default", distill_weight=1.5)


def test_a_resumed_run_refuses_a_teacher_whose_files_changed(tmp_path):
    teacher = load_teacher("default")
    provenance = tmp_path / "provenance.json"
    provenance.write_text(json.dumps({"teacher": {"weight": 0.9, "models": teacher.record}}))
    same_teacher(teacher, provenance)  # the same files: nothing to say
    changed = [{**teacher.record[0], "sha256": "0" * 64}]
    provenance.write_text(json.dumps({"teacher": {"weight": 0.9, "models": changed}}))
    with pytest.raises(ModelFileError, match="--teacher default: not the model this run started with"):
        same_teacher(teacher, provenance)


def test_the_training_loss_is_the_class_weighted_cross_entropy_against_the_soft_target():
    from pneumoscan.models import build_model
    from pneumoscan.training.module import XrayClassifier

    config = TrainConfig(image_size=32, teacher="default", distill_weight=0.9)
    module = XrayClassifier(build_model("mini-resnet", 32), config, class_weights=(2.0, 0.5))
    logits, labels, teacher = torch.tensor([0.3, -1.0]), torch.tensor([0.0, 1.0]), torch.tensor([0.2, 0.6])
    targets = [0.9 * 0.2 + 0.1 * 0.05, 0.9 * 0.6 + 0.1 * 0.95]  # labels smoothed by 0.1: 0.05 and 0.95
    expected = np.mean([w * -(t * np.log(1 / (1 + np.exp(-z))) + (1 - t) * np.log(1 - 1 / (1 + np.exp(-z))))
                        for w, t, z in zip((2.0, 0.5), targets, (0.3, -1.0), strict=True)])
    assert module._loss(logits, labels, 0.1, teacher).item() == pytest.approx(expected, rel=1e-6)
