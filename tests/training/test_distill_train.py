"""Training with a teacher: it scores the very augmented batch the student learns from, and the run records it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers.synthetic import write_synthetic_image
from pneumoscan.bundled import BUNDLED_DIR
from pneumoscan.cli import main
from pneumoscan.config_files import load_config
from pneumoscan.models import read_meta
from pneumoscan.provenance import sha256_file
from pneumoscan.training import TrainConfig, distill, train

pytestmark = pytest.mark.e2e  # this module trains models


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """Kermany-style folders: 12 patients per class, two 64 px images each."""
    root = tmp_path_factory.mktemp("distill-data")
    for i in range(12):
        for k, seed in enumerate((i, 100 + i)):
            write_synthetic_image(root / "train" / "NORMAL" / f"IM-{i:04d}-000{k + 1}.png", 0, seed=seed)
            write_synthetic_image(root / "train" / "PNEUMONIA" / f"person{500 + i}_bacteria_{i}{k}.png", 1,
                                  seed=200 + seed)
    return root


def options(data: Path, out: Path) -> dict:
    return {"data": str(data), "out": str(out), "model": "mini-resnet", "image_size": 64, "epochs": 1,
            "batch_size": 16, "val_fraction": 0.3, "progress": False, "threads": 1}


def test_the_teacher_scores_exactly_the_augmented_batch_the_student_learns_from(dataset, tmp_path, monkeypatch):
    import lightning as L

    seen: dict[str, list[torch.Tensor]] = {"teacher": [], "student": []}
    real = distill.load_teacher

    def spied(spec: str) -> distill.Teacher:
        teacher = real(spec)
        teacher.register_forward_pre_hook(lambda _, args: seen["teacher"].append(args[0].detach().clone()))
        return teacher

    class StudentInput(L.Callback):
        def on_fit_start(self, trainer, module) -> None:
            def record(network, args) -> None:
                if network.training:  # validation is never augmented and never asks the teacher
                    seen["student"].append(args[0].detach().clone())

            module.model.register_forward_pre_hook(record)

    monkeypatch.setattr(distill, "load_teacher", spied)
    monkeypatch.delenv("PNEUMOSCAN_RUN_DIR", raising=False)
    train(TrainConfig(**options(dataset, tmp_path), teacher="default"), callbacks=[StudentInput()])
    assert len(seen["teacher"]) == len(seen["student"]) >= 2  # one call per training step
    for teacher_view, student_view in zip(seen["teacher"], seen["student"], strict=True):
        assert torch.equal(teacher_view, student_view)
    # the augmented view, not the stored image: stored pixels are multiples of 1/255
    first = seen["teacher"][0]
    assert not torch.allclose(first * 255, (first * 255).round(), atol=1e-3)


def test_a_run_with_a_teacher_trains_and_records_the_teacher(dataset, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("PNEUMOSCAN_RUN_DIR", raising=False)
    out = tmp_path / "runs"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in options(dataset, out).items() if k != "progress"]
    assert main(["train", *flags, "--no-progress", "--teacher", "default", "--distill-weight", "0.8",
                 "--run-name", "student"]) == 0
    assert "teacher: default (efficientnet-lite0, 128px), weight 0.8" in capsys.readouterr().out
    run = out / "student"
    config = load_config(TrainConfig, run / "config.yaml")
    assert (config.teacher, config.distill_weight) == ("default", 0.8)  # `train --config` repeats it
    recorded = json.loads((run / "provenance.json").read_text())["teacher"]
    assert recorded["weight"] == 0.8
    (model,) = recorded["models"]
    assert model["sha256"] == sha256_file(BUNDLED_DIR / "model.safetensors") and model["image_size"] == 128
    meta = read_meta(run)
    assert meta.provenance["teacher"] == recorded and meta.image_size == 64
    # the student alone is the model: no teacher weights in its checkpoint
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert state and all(key.startswith("model.") for key in state)


def test_the_original_view_scores_each_training_image_once_before_training(dataset, tmp_path, monkeypatch):
    import lightning as L

    calls: list[tuple[torch.Tensor, torch.Tensor]] = []
    given: list[torch.Tensor] = []
    real = distill.load_teacher

    def spied(spec: str) -> distill.Teacher:
        teacher = real(spec)
        teacher.register_forward_hook(lambda _, args, out: calls.append((args[0].clone(), out.clone())))
        return teacher

    class Batches(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
            given.append(batch[2].clone())

    monkeypatch.setattr(distill, "load_teacher", spied)
    monkeypatch.delenv("PNEUMOSCAN_RUN_DIR", raising=False)
    run = train(TrainConfig(**options(dataset, tmp_path), teacher="default", distill_view="original"),
                callbacks=[Batches()])
    # every call came before training, on the stored (un-augmented) pixels: multiples of 1/255
    assert all(torch.allclose(x * 255, (x * 255).round(), atol=1e-4) for x, _ in calls)
    scored = torch.cat([out for _, out in calls])
    seen = torch.cat(given)
    assert len(seen) == len(scored)  # one epoch: each training image once, with the score computed for it
    assert torch.equal(seen.sort().values, scored.sort().values)
    assert json.loads((run / "provenance.json").read_text())["teacher"]["view"] == "original"
