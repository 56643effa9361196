"""The subtype head: fitted on a trained network's features of the images whose subtype is known, stored with
the model, computed by both backends in the same pass, and answered for PNEUMONIA rows only."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from pneumoscan.data.image import read_image
from pneumoscan.data.records import kermany_subtype
from pneumoscan.errors import ConfigError, DatasetError, ModelFileError
from pneumoscan.models.subtype_meta import problem
from pneumoscan.training.config import TrainConfig
from pneumoscan.training.run import _fit_subtype
from pneumoscan.training.subtype_fit import fit_subtype_on_pixels


def _kermany(shared_data, split_folder: str, per_subtype: int, size: int, skip: int = 0):
    """``per_subtype`` bacterial and viral images (after ``skip`` of each) and 10 normal ones, with their subtypes."""
    folder = shared_data / "chest_xray" / split_folder
    files = []
    for kind in ("bacteria", "virus"):
        files += sorted((folder / "PNEUMONIA").glob(f"*_{kind}_*.jpeg"))[skip : skip + per_subtype]
    normal = sorted((folder / "NORMAL").glob("*.jpeg"))[skip : skip + 10]
    pixels = np.stack([read_image(f, size, "pad") for f in files + normal])
    return pixels, [kermany_subtype(f.stem) for f in files] + [None] * len(normal), files + normal


@pytest.fixture(scope="module")
def bundled_network():
    from pneumoscan.bundled import BUNDLED_DIR, WEIGHTS_FILE
    from pneumoscan.models import load_model

    return load_model(BUNDLED_DIR / WEIGHTS_FILE)


def test_the_head_learns_the_subtype_from_the_network_features_and_states_its_rule(shared_data, bundled_network):
    model, meta = bundled_network
    size = meta.image_size
    train = _kermany(shared_data, "train", 80, size)
    val = _kermany(shared_data, "train", 40, size, skip=400)  # other children of the same folder
    info = fit_subtype_on_pixels(model, train[0], train[1], val[0], val[1])
    assert problem(info) is None
    # Unknown subtypes (the normal images) are masked, never counted as either subtype.
    assert info["fitted_on"] == {**info["fitted_on"], "train_bacterial": 80, "train_viral": 80,
                                 "val_bacterial": 40, "val_viral": 40}
    assert info["val_metrics"]["auc"] > 0.7  # the bundled network's features carry the subtype
    low, high = info["uncertain"]
    assert low <= info["threshold"] <= high
    assert set(model.state_dict()) >= {"subtype.weight", "subtype.bias"}


def test_too_few_known_subtypes_leave_no_head_and_a_note(shared_data, bundled_network):
    import copy

    model, meta = copy.deepcopy(bundled_network[0]), bundled_network[1]
    pixels, subtypes, _ = _kermany(shared_data, "train", 5, meta.image_size)
    with pytest.raises(ConfigError, match="at least 20 train images of each subtype"):
        fit_subtype_on_pixels(model, pixels, subtypes, pixels, subtypes)
    provenance = {}
    data = SimpleNamespace(train_images=pixels, val_images=pixels,
                           train_samples=[SimpleNamespace(subtype=s) for s in subtypes],
                           val_samples=[SimpleNamespace(subtype=s) for s in subtypes])
    assert _fit_subtype(model, data, TrainConfig(), provenance) == {}
    assert any(n.startswith("no subtype head: ") for n in provenance["notes"])


@pytest.fixture(scope="module")
def subtype_run(shared_data, tmp_path_factory, bundled_network):
    """The bundled network with a head fitted on a few real images, saved and exported to ONNX."""
    import copy
    from dataclasses import replace

    from pneumoscan.models import save_model
    from pneumoscan.serving.export import export_onnx

    model, meta = copy.deepcopy(bundled_network[0]), bundled_network[1]
    train = _kermany(shared_data, "train", 40, meta.image_size)
    val = _kermany(shared_data, "train", 20, meta.image_size, skip=400)
    folder = tmp_path_factory.mktemp("subtype-run")
    save_model(folder, model, replace(meta, subtype=fit_subtype_on_pixels(model, *train[:2], *val[:2])))
    export_onnx(folder)
    return folder


def test_both_backends_answer_the_subtype_for_pneumonia_rows_only(shared_data, subtype_run):
    from pneumoscan import load

    files = _kermany(shared_data, "test", 4, 128)[2]
    torch_rows = load(subtype_run, backend="torch").predict(files)
    onnx_rows = load(subtype_run / "export" / "model.onnx").predict(files)
    assert any(r.label == "PNEUMONIA" for r in torch_rows) and any(r.label == "NORMAL" for r in torch_rows)
    for t, o in zip(torch_rows, onnx_rows, strict=True):
        assert (t.label, t.subtype) == (o.label, o.subtype)
        if t.label == "PNEUMONIA":
            assert t.subtype in ("bacterial", "viral", "uncertain")
            assert abs(t.viral_probability - o.viral_probability) < 1e-4
        else:  # NORMAL or refused: neither field
            assert t.subtype is None and t.viral_probability is None


def test_a_head_the_metadata_does_not_describe_or_the_reverse_is_refused(subtype_run, tmp_path):
    from dataclasses import replace

    from pneumoscan.models import load_model, save_model

    model, meta = load_model(subtype_run)
    save_model(tmp_path / "no-meta", model, replace(meta, subtype={}))
    with pytest.raises(ModelFileError, match="subtype.* tensors but its metadata describes no subtype head"):
        load_model(tmp_path / "no-meta")
    del model.subtype
    save_model(tmp_path / "no-head", model, meta)
    with pytest.raises(ModelFileError, match="describes a subtype head but it holds no subtype"):
        load_model(tmp_path / "no-head")


@pytest.fixture(scope="module")
def kermany_with_subtypes(shared_data, tmp_path_factory):
    """A Kermany-layout folder (symlinks): 40 normal, 40 bacterial and 40 viral training radiographs."""
    root = tmp_path_factory.mktemp("kermany-subtypes")
    folder = shared_data / "chest_xray" / "train"
    picked = {"NORMAL": sorted((folder / "NORMAL").glob("*.jpeg"))[:40],
              "PNEUMONIA": sorted((folder / "PNEUMONIA").glob("*_bacteria_*.jpeg"))[:40]
              + sorted((folder / "PNEUMONIA").glob("*_virus_*.jpeg"))[:40]}
    for cls, files in picked.items():
        (root / "train" / cls).mkdir(parents=True)
        for f in files:
            (root / "train" / cls / f.name).symlink_to(f)
    return root


@pytest.mark.e2e
def test_training_gives_the_model_a_head_and_fit_subtype_makes_the_same_one_again(kermany_with_subtypes, tmp_path,
                                                                                   monkeypatch):
    import shutil

    from pneumoscan.data import load_dataset
    from pneumoscan.models import load_model
    from pneumoscan.training import TrainConfig, train
    from pneumoscan.training.subtype_fit import fit_subtype

    monkeypatch.delenv("PNEUMOSCAN_RUN_DIR", raising=False)
    run = train(TrainConfig(data=str(kermany_with_subtypes), out=str(tmp_path / "runs"), model="mini-resnet",
                            image_size=32, epochs=1, batch_size=16, val_fraction=0.3, progress=False, threads=1))
    trained, meta = load_model(run)
    assert meta.subtype and meta.subtype["fitted_on"]["val_viral"] >= 10
    # The run's split file keeps each image's subtype, so the split is a dataset with its subtypes.
    recorded = load_dataset(run / "split.csv").samples
    assert {s.subtype for s in recorded if s.label == 1} == {"bacterial", "viral"}
    assert {s.subtype for s in recorded if s.label == 0} == {None}
    # Fitted again from the options stored in the model, on the split made again: the same head (to float
    # rounding: the saved network computes its features in another memory layout than training's).
    again = fit_subtype(run, out=tmp_path / "again")
    refitted, _ = load_model(tmp_path / "again")
    assert again["uncertain"] == pytest.approx(meta.subtype["uncertain"], abs=1e-4)
    assert again["fitted_on"] == meta.subtype["fitted_on"]
    assert torch_close(refitted.subtype.weight, trained.subtype.weight)
    # Other data than the model was trained on: refused, nothing written.
    other = tmp_path / "other"
    shutil.copytree(kermany_with_subtypes, other, symlinks=True)
    next((other / "train" / "NORMAL").iterdir()).unlink()
    with pytest.raises(DatasetError, match="not the one .* was trained on"):
        fit_subtype(run, other, out=tmp_path / "refused")
    assert not (tmp_path / "refused").exists()


def test_a_model_that_does_not_record_its_training_cannot_get_a_head(exported_run):
    from pneumoscan.training.subtype_fit import fit_subtype

    with pytest.raises(ConfigError, match="does not record the training options"):
        fit_subtype(exported_run, out=exported_run.parent / "never")


def torch_close(a, b) -> bool:
    import torch

    return bool(torch.allclose(a, b, rtol=1e-3, atol=1e-5))
