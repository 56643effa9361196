"""`pneumoscan fit-scope` gives a model saved without a scope gate one, fitted on a dataset's training images."""

from __future__ import annotations

from helpers.synthetic import write_synthetic_image
from pneumoscan.cli import main
from pneumoscan.inference import load


def test_fit_scope_gives_an_old_model_a_gate_from_a_data_folder(tmp_path, capsys):
    import torch

    from pneumoscan.models import ModelMeta, build_model, read_meta, save_model

    torch.manual_seed(0)
    run = tmp_path / "old-run"
    save_model(run, build_model("mini-resnet", 64), ModelMeta(name="mini-resnet", image_size=64, run_id="old"))
    assert load(run).scope_note is not None
    for i in range(110):
        write_synthetic_image(tmp_path / "data" / "train" / ("NORMAL", "PNEUMONIA")[i % 2] / f"IM-{i:04d}-0001.png",
                          i % 2, seed=i)
    assert main(["fit-scope", str(run), str(tmp_path / "data"), "--images", "50", "--held-out", "20"]) == 0
    assert "keep" in capsys.readouterr().out
    meta = read_meta(run)
    assert meta.scope["fitted_on"] == 50 and meta.scope["held_out"] == 20 and load(run).scope_note is None
    assert load(run).predict(str(tmp_path / "data" / "train" / "NORMAL" / "IM-0000-0001.png"))[0].probability is not None

    small = tmp_path / "small"
    for i in range(30):
        write_synthetic_image(small / "train" / "NORMAL" / f"IM-{i:04d}-0001.png", 0, seed=i)
        write_synthetic_image(small / "train" / "PNEUMONIA" / f"IM-{i:04d}-0002.png", 1, seed=i)
    assert main(["fit-scope", str(run), str(small)]) == 2
    assert "the scope gate needs at least 50 training images" in capsys.readouterr().err
