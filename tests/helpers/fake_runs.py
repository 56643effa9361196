"""Helpers for evaluation tests: a tiny saved model in a fake run folder, and a small synthetic dataset.

No training is needed to test evaluation: a freshly initialised 32 px seed CNN is a real model with
real (if poor) scores; its validation predictions are written by scoring real validation images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

SIZE = 32


def make_run(folder: Path, data: Path, threshold: float = 0.5, seed: int = 0,
             operating_points: dict[str, float] | None = None) -> Path:
    """A run folder: model.safetensors (seed-cnn, 32 px), split.csv, val_predictions.csv and history.csv."""
    import pneumoscan
    from pneumoscan.data import kermany_patient_id
    from pneumoscan.models import build_model
    from pneumoscan.models.artifact import ModelMeta, save_model

    torch.manual_seed(seed)
    model = build_model("seed-cnn", SIZE)
    meta = ModelMeta(name="seed-cnn", image_size=SIZE, fit="pad", threshold=threshold,
                     operating_points=dict(operating_points or {}), run_id=folder.name)
    save_model(folder, model, meta)
    val = sorted((data / "val").rglob("*.png"))
    train = sorted((data / "train").rglob("*.png"))
    rows = ["path,label,patient_id,split"]
    for split, files in (("train", train), ("val", val)):
        rows += [f"{f},{int(f.parent.name == 'PNEUMONIA')},{kermany_patient_id(f.stem)},{split}" for f in files]
    (folder / "split.csv").write_text("\n".join(rows) + "\n")
    probs = [p.probability for p in pneumoscan.load(folder).predict(val)]
    lines = ["path,patient_id,label,probability"]
    lines += [f"{f},{kermany_patient_id(f.stem)},{int(f.parent.name == 'PNEUMONIA')},{p:.6f}"
              for f, p in zip(val, probs, strict=True)]
    (folder / "val_predictions.csv").write_text("\n".join(lines) + "\n")
    # As training does: the model file carries its validation figures at its threshold.
    from dataclasses import replace

    from pneumoscan.training.metrics import binary_summary

    labels = [int(f.parent.name == "PNEUMONIA") for f in val]
    save_model(folder, model, replace(meta, val_metrics=binary_summary(labels, probs, threshold)))
    (folder / "history.csv").write_text("epoch,train_loss,val_loss,train_acc,val_acc,train_auc,val_auc\n"
                                        "0,0.69,0.68,0.5,0.55,0.5,0.6\n1,0.6,0.62,0.7,0.66,0.75,0.7\n")
    return folder


def with_subtype_rule(folder: Path, rule: dict) -> Path:
    """The run's model saved again with a subtype head of seeded random weights and ``rule`` as its
    ``ModelMeta.subtype`` (the network unchanged): a model with a head, for the outputs that read it."""
    from dataclasses import replace

    import torch

    from pneumoscan.models.artifact import load_model, save_model
    from pneumoscan.models.registry import heads
    from pneumoscan.models.subtype_head import SubtypeHead, attach_subtype

    model, meta = load_model(folder)
    head = SubtypeHead(sum(h.in_features for h in heads(model)))
    head.weight.copy_(torch.randn(head.weight.shape, generator=torch.Generator().manual_seed(0)) * 0.1)
    save_model(folder, attach_subtype(model, head), replace(meta, subtype=dict(rule)))
    return folder


def write_image(path: Path, label: int, seed: int, size: int = 48) -> None:
    """A fake radiograph: noise, and for pneumonia a bright blob (so a model can tell the classes apart)."""
    rng = np.random.default_rng(seed)
    img = rng.normal(110, 25, (size, size))
    if label == 1:
        yy, xx = np.mgrid[:size, :size] / size
        img += 80 * np.exp(-(((xx - rng.uniform(0.3, 0.7)) / 0.1) ** 2 + ((yy - 0.5) / 0.12) ** 2))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "L").save(path)


def make_dataset(root: Path, per_class: dict[str, int], start: int = 0) -> Path:
    """Synthetic images with Kermany names (patient in the name) under ``root/<split>/<CLASS>/``, 2 per patient."""
    for split, count in per_class.items():
        for label, cls in enumerate(("NORMAL", "PNEUMONIA")):
            for i in range(count):
                patient = start + 1000 * label + i // 2 + (0 if split == "train" else 100 * (1 + ["val", "test"].index(split)))
                name = f"person{patient}_bacteria_{i}.png" if label else f"IM-{patient:04d}-{i:04d}.png"
                write_image(root / split / cls / name, label,
                            seed=start + 10_000 * label + 1_000 * ["train", "val", "test"].index(split) + i)
    return root
