"""A model with a scope gate for the tests, and pictures on both sides of it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from helpers.synthetic import write_synthetic_image


def make_gated_run(folder: Path) -> None:
    """A random 64 px mini-resnet (the exported test model's recipe) with a gate fitted on synthetic
    radiographs, saved and exported: the gate's plumbing does not depend on training."""
    import torch

    from pneumoscan import __version__
    from pneumoscan.models import ModelMeta, build_model, save_model
    from pneumoscan.serving.export import export_onnx
    from pneumoscan.training.scope_fit import fit_scope_on_pixels

    torch.manual_seed(3)
    model = build_model("mini-resnet", 64).eval()
    pixels = np.stack([np.asarray(Image.open(write_synthetic_image(folder / "train" / f"{i}.png", i % 2, seed=i)))
                       for i in range(160)])
    scope = fit_scope_on_pixels(model, pixels, fit="pad", held_out=40)
    meta = ModelMeta(name="mini-resnet", image_size=64, fit="pad", threshold=0.5, temperature=1.7,
                     version=__version__, run_id="gated", scope=scope)
    save_model(folder, model, meta)
    export_onnx(folder)


def pictures(folder: Path) -> dict[str, Path]:
    """In scope: synthetic radiographs of the training kind; out: a text page, noise, a radiograph upside down."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {f"chest{i}": write_synthetic_image(folder / f"chest{i}.png", i % 2, seed=1000 + i) for i in range(4)}
    page = Image.new("L", (300, 400), 250)
    draw = ImageDraw.Draw(page)
    for y in range(10, 390, 22):
        draw.text((10, y), "no acute cardiopulmonary findings", fill=0, font=ImageFont.load_default(size=16))
    page.save(folder / "page.png")
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64), dtype=np.uint8)).save(folder / "noise.png")
    return {**files, "page": folder / "page.png", "noise": folder / "noise.png"}
