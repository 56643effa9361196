"""Which file `pneumoscan serve RUN` serves: the ONNX export only while it is the export of the run's model."""

from __future__ import annotations

import shutil

import torch

from pneumoscan.models import ModelMeta, build_model, read_meta, save_model
from pneumoscan.serving.loader import resolve_model


def test_a_run_serves_its_onnx_export_while_it_matches_the_runs_model(served_run):
    source = resolve_model(served_run)
    assert source.backend == "onnxruntime"
    assert source.path == served_run / "export" / "model.onnx"


def test_a_stale_export_is_not_served_after_the_run_is_retrained(served_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(served_run, run)
    meta = read_meta(run)
    torch.manual_seed(1)
    save_model(run, build_model(meta.name, meta.image_size),
               ModelMeta(name=meta.name, image_size=meta.image_size, threshold=0.2, version=meta.version))
    source = resolve_model(run)
    assert source.backend == "torch"
    assert source.path == run / "model.safetensors"


def test_a_stale_exports_model_card_is_not_served_for_the_retrained_model(served_run, tmp_path):
    from pneumoscan.serving.loader import load_served_model

    run = tmp_path / "run"
    shutil.copytree(served_run, run)
    meta = read_meta(run)
    save_model(run, build_model(meta.name, meta.image_size),
               ModelMeta(name=meta.name, image_size=meta.image_size, threshold=0.7, run_id="retrained"))
    served = load_served_model(run)
    assert served.backend == "torch"
    assert "test-run" not in str(served.card)  # the old export's card named the old run
    assert "0.7" in str(served.card)
