"""A tiny exported model shared by the streamed and Ray prediction tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def exported_run(tmp_path_factory) -> Path:
    """A run folder with a random 32 px seed-cnn, its operating points, and its ONNX export in ``export/``
    (the plumbing under test does not depend on the weights; ONNX Runtime scores it fast)."""
    import torch

    from pneumoscan.models import ModelMeta, build_model, save_model
    from pneumoscan.serving.export import export_onnx

    folder = tmp_path_factory.mktemp("exported-run")
    torch.manual_seed(0)
    meta = ModelMeta(name="seed-cnn", image_size=32, threshold=0.5, version="test",
                     operating_points={"youden": 0.5, "sens95": 0.2, "spec95": 0.8})
    save_model(folder, build_model("seed-cnn", 32), meta)
    export_onnx(folder)
    return folder
