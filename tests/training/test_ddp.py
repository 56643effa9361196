"""Scaling out through Lightning: two CPU processes (gloo) train one model and end with the same weights."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import lightning as L
import pytest

from helpers.synthetic import write_synthetic_image
from pneumoscan.training import TrainConfig, train

pytestmark = pytest.mark.e2e  # this module trains models


class WeightsFingerprint(L.Callback):
    """Each rank writes a hash of its final weights (module level: ddp_spawn pickles callbacks)."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        digest = hashlib.sha256()
        # The trainable weights, which DDP keeps identical by averaging gradients. Batch-norm running
        # statistics are per rank in DDP (no SyncBatchNorm), and the weight average keeps its own copy.
        for key, value in sorted(pl_module.model.named_parameters()):
            digest.update(key.encode())
            digest.update(value.detach().cpu().contiguous().numpy().tobytes())
        out = Path(self.folder) / f"rank{trainer.global_rank}.json"
        out.write_text(json.dumps({"sha256": digest.hexdigest(), "world_size": trainer.world_size,
                                   "step": trainer.global_step}))


def test_ddp_on_two_cpu_processes_ends_with_identical_weights_on_both_ranks(tmp_path, monkeypatch):
    monkeypatch.delenv("PNEUMOSCAN_RUN_DIR", raising=False)
    for i in range(6):
        write_synthetic_image(tmp_path / "data" / "NORMAL" / f"IM-{i:04d}-0001.png", 0, seed=i, size=40)
        write_synthetic_image(tmp_path / "data" / "PNEUMONIA" / f"person{i}_virus_{i}.png", 1, seed=50 + i, size=40)
    config = TrainConfig(
        data=str(tmp_path / "data"), out=str(tmp_path / "runs"), run_name="ddp", image_size=32, epochs=1,
        batch_size=4, val_fraction=0.34, accelerator="cpu", devices="2", strategy="ddp_spawn", threads=1,
        progress=False, early_stopping=0,
    )
    run = train(config, callbacks=[WeightsFingerprint(str(tmp_path))])
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world_size"] == ranks[1]["world_size"] == 2
    assert ranks[0]["step"] == ranks[1]["step"] > 0
    assert ranks[0]["sha256"] == ranks[1]["sha256"]
    assert (run / "model.safetensors").is_file()
