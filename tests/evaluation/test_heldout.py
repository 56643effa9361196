"""Training -> evaluation: with no --data, `evaluate RUN` scores the patients training held out."""

from __future__ import annotations

import csv

import pytest

from helpers.synthetic import write_synthetic_image
from pneumoscan.evaluation import EvaluateConfig, evaluate
from pneumoscan.training import TrainConfig, train

pytestmark = pytest.mark.e2e  # this module trains models


def test_evaluate_without_data_scores_the_runs_held_out_test_patients_and_finds_no_leak(tmp_path, monkeypatch):
    root = tmp_path / "data"
    for i in range(10):
        for j in range(2):
            write_synthetic_image(root / "NORMAL" / f"IM-{i:04d}-000{j}.png", 0, seed=10 * i + j, size=40)
            write_synthetic_image(root / "PNEUMONIA" / f"person{i}_virus_{j}.png", 1, seed=500 + 10 * i + j, size=40)
    monkeypatch.delenv("PNEUMOSCAN_RUN_DIR", raising=False)
    run = train(TrainConfig(data=str(root), out=str(tmp_path / "runs"), model="mini-resnet", image_size=32, epochs=1, batch_size=8,
                            val_fraction=0.2, test_fraction=0.2, progress=False, threads=1))
    with open(run / "split.csv", newline="") as fh:
        held_out = [r for r in csv.DictReader(fh) if r["split"] == "test"]
    assert {r["label"] for r in held_out} == {"NORMAL", "PNEUMONIA"}

    result = evaluate(EvaluateConfig(models=[str(run)], bootstrap=50, gallery=0))

    data = result.report["data"]
    assert data["split"] == "test" and data["root"] == str(run / "split.csv")
    assert data["images"] == len(held_out)
    assert data["patients"] == len({r["patient_id"] for r in held_out})
    assert result.report["leakage"]["patients"] == {} and result.report["leakage"]["images"] == {}
    assert not [w for w in result.report["warnings"] if "LEAKAGE" in w]
