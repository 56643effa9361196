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


@pytest.fixture
def nothing_is_built(monkeypatch):
    """Building a network from metadata that the tensors contradict is what must not happen."""
    import pneumoscan.models.registry as registry

    def refuse(*args, **kwargs):
        raise AssertionError(f"a network was built: build_model{args}")

    monkeypatch.setattr(registry, "build_model", refuse)


def test_a_tiny_file_claiming_a_huge_ensemble_is_refused_before_any_network_is_built(tmp_path, nothing_is_built,
                                                                                       capsys):
    from pneumoscan.cli import main

    path = tmp_path / "tiny.safetensors"
    save_file({}, str(path), metadata={"pneumoscan": json.dumps({"name": "seed-cnn", "image_size": 1024,
                                                                  "members": 32})})
    assert path.stat().st_size < 200
    with pytest.raises(ModelFileError, match=r"tiny.safetensors: the weights do not fit .*32 members.*missing"):
        load_model(path)
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("L", (64, 64), 90).save(image)
    assert main(["predict", str(path), str(image)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") <= 2 and "tiny.safetensors" in err and "Traceback" not in err, err


@pytest.mark.parametrize(("field", "value", "words"), [
    ("image_size", 1024, r"network.\d+.weight is \(.*\), expected \("),  # seed-cnn's head grows with the size
    ("members", 3, "missing"),
])
def test_metadata_that_the_tensors_contradict_is_refused_before_building(tmp_path, field, value, words):
    original = _saved_model(tmp_path / "good")
    meta = json.loads(read_meta(tmp_path / "good").to_json())
    meta[field] = value
    state = {k: v.contiguous() for k, v in original.state_dict().items()}
    bad = tmp_path / "bad.safetensors"
    save_file(state, str(bad), metadata={"pneumoscan": json.dumps(meta)})
    torch.save({"state_dict": {f"model.{k}": v for k, v in state.items()}, "pneumoscan": json.dumps(meta)},
               tmp_path / "bad.ckpt")
    import pneumoscan.models.registry as registry

    real = registry.build_model
    registry.build_model = lambda *a, **k: pytest.fail("built before checking the tensors")
    try:
        for file in (bad, tmp_path / "bad.ckpt"):
            with pytest.raises(ModelFileError, match=words) as info:
                load_model(file)
            assert str(file) in str(info.value) and "\n" not in str(info.value)
    finally:
        registry.build_model = real


@pytest.mark.parametrize(("name", "members"), [("seed-cnn", 1), ("seed-cnn", 2), ("mini-resnet", 2)])
def test_the_expected_tensors_are_those_of_the_built_network(name, members):
    from pneumoscan.models.registry import expected_weights

    built = {k: tuple(v.shape) for k, v in build_model(name, 48, members).state_dict().items()}
    assert expected_weights(name, 48, members) == built


def test_an_undefined_validation_metric_is_left_out_not_stored_as_nan(tmp_path):
    model = build_model("seed-cnn", 32).eval()
    save_model(tmp_path, model, ModelMeta(name="seed-cnn", image_size=32, val_metrics={"auc": float("nan"), "n": 3}))
    assert load_model(tmp_path)[1].val_metrics == {"n": 3}
    assert json.loads((tmp_path / "model.json").read_text())["val_metrics"] == {"n": 3}


def test_a_scope_gate_beside_the_network_loads_and_an_oversized_one_is_refused_before_building(tmp_path):
    from pneumoscan.models.scope_gate import ScopeGate, attach

    original = _saved_model(tmp_path / "good")
    meta = read_meta(tmp_path / "good")
    gated = attach(original, ScopeGate(128, 16))  # seed-cnn's penultimate layer has 128 features
    save_model(tmp_path / "gated", gated, meta)
    loaded, _ = load_model(tmp_path / "gated")
    assert tuple(loaded.scope.basis.shape) == (128, 16)

    state = {k: v.contiguous() for k, v in original.state_dict().items() if not k.startswith("scope.")}
    state["scope.basis"] = torch.zeros(5000, 1)  # a header that would make the gate allocate without bound
    bad = tmp_path / "bad.safetensors"
    save_file(state, str(bad), metadata={"pneumoscan": meta.to_json()})
    with pytest.raises(ModelFileError, match="scope.basis") as info:
        load_model(bad)
    assert str(bad) in str(info.value) and "\n" not in str(info.value)
