import json
import pickle

import pytest
import torch
from safetensors.torch import save_file

from pneumoscan.errors import ModelFileError
from pneumoscan.models import ModelMeta, build_model, load_model, read_meta, save_model


def _saved_model(folder, name="seed-cnn", size=32, threshold=0.37):
    torch.manual_seed(1)
    model = build_model(name, size).eval()
    save_model(folder, model, ModelMeta(name=name, image_size=size, threshold=threshold))
    return model


def test_saved_model_loads_back_with_the_same_outputs_and_threshold(tmp_path):
    original = _saved_model(tmp_path)
    loaded, meta = load_model(tmp_path)
    images = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), original(images))
    assert meta.threshold == pytest.approx(0.37)
    assert json.loads((tmp_path / "model.json").read_text())["threshold"] == pytest.approx(0.37)
    assert read_meta(tmp_path / "model.safetensors").name == "seed-cnn"


class _Payload:
    def __reduce__(self):
        import os

        return (os.system, ("touch PWNED",))


def test_a_checkpoint_holding_a_pickled_payload_is_refused_and_never_executed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    evil = tmp_path / "evil.ckpt"
    with open(evil, "wb") as fh:
        pickle.dump({"state_dict": {}, "pneumoscan": _Payload()}, fh)
    torch.save({"x": 1}, tmp_path / "harmless.pt")
    with pytest.raises(ModelFileError, match="evil.ckpt: refused"):
        load_model(evil)
    assert not (tmp_path / "PWNED").exists()


def test_a_safetensors_file_without_our_metadata_is_not_taken_for_a_model(tmp_path):
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(ModelFileError, match="without pneumoscan metadata"):
        load_model(foreign)


def test_weights_of_another_architecture_give_a_one_line_error(tmp_path):
    _saved_model(tmp_path)
    model, meta = load_model(tmp_path)
    meta.name = "resnet18"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "other.safetensors"),
              metadata={"pneumoscan": meta.to_json()})
    with pytest.raises(ModelFileError, match="do not fit a 'resnet18' network"):
        load_model(tmp_path / "other.safetensors")


def test_a_folder_without_a_model_says_so(tmp_path):
    with pytest.raises(ModelFileError, match="no model.safetensors"):
        load_model(tmp_path)
