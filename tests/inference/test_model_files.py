"""Which files make a model: one owner (`inference.model_files`) answers for predict, the Python API, the
server, the DICOM node, explain and calibrate, and the classifier it loads keeps those files."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

import pneumoscan
from pneumoscan.bundled import BUNDLED_DIR, CARD_JSON, ONNX_FILE, WEIGHTS_FILE
from pneumoscan.data.image import read_image
from pneumoscan.errors import ModelFileError
from pneumoscan.inference import Classifier, ModelFiles, resolve_model
from pneumoscan.models import ModelMeta, build_model, read_meta, save_model


def test_a_run_serves_its_onnx_export_while_it_matches_the_runs_model(exported_run):
    source = resolve_model(exported_run, prefer_onnx=True)
    assert source.backend == "onnxruntime"
    assert source.path == exported_run / "export" / "model.onnx"
    assert source.weights == exported_run / "model.safetensors" and source.run_folder == exported_run
    assert source.card == exported_run / "export" / "model_card.json" and source.note is None


def test_a_stale_export_is_not_served_after_the_run_is_retrained(exported_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(exported_run, run)
    meta = read_meta(run)
    torch.manual_seed(1)
    save_model(run, build_model(meta.name, meta.image_size),
               ModelMeta(name=meta.name, image_size=meta.image_size, threshold=0.2, version=meta.version))
    source = resolve_model(run, prefer_onnx=True)
    assert source.backend == "torch"
    assert source.path == run / "model.safetensors"
    assert source.card is None and "stale" in source.note


def test_every_kind_of_model_argument_resolves_to_its_files(exported_run, tmp_path):
    onnx = exported_run / "export" / "model.onnx"
    assert resolve_model(onnx) == ModelFiles(onnx, "onnxruntime", exported_run / "model.safetensors",
                                             onnx.parent / "model_card.json", exported_run)
    weights = exported_run / "model.safetensors"
    assert resolve_model(weights) == ModelFiles(weights, "torch", weights, None, exported_run)
    assert resolve_model(exported_run) == ModelFiles(weights, "torch", weights, None, exported_run)  # PyTorch, as asked
    # on another device a run is PyTorch even with prefer_onnx; so is the bundled model
    assert resolve_model(exported_run, device="cuda", prefer_onnx=True).backend == "torch"
    bundled = resolve_model()
    assert (bundled.path, bundled.backend, bundled.bundled) == (BUNDLED_DIR / ONNX_FILE, "onnxruntime", True)
    assert bundled.weights == BUNDLED_DIR / WEIGHTS_FILE and bundled.card == BUNDLED_DIR / CARD_JSON
    assert resolve_model(device="cuda").path == BUNDLED_DIR / WEIGHTS_FILE
    # an ONNX file alone: no weights, no card
    lonely = tmp_path / "lonely.onnx"
    shutil.copyfile(onnx, lonely)
    assert resolve_model(lonely) == ModelFiles(lonely, "onnxruntime", None, None, tmp_path)
    with pytest.raises(ModelFileError, match="lonely.onnx: Grad-CAM needs the PyTorch weights"):
        resolve_model(lonely).load_network()
    with pytest.raises(ModelFileError, match="nothing.onnx: no such ONNX model file"):
        resolve_model(tmp_path / "nothing.onnx")
    with pytest.raises(ModelFileError, match="no such model file or run folder"):
        resolve_model(tmp_path / "nothing")


def test_the_loaded_classifier_carries_its_backend_weights_and_card(exported_run, tmp_path):
    """One model object: what pneumoscan.load returns is what the server and the DICOM node hold."""
    onnx = pneumoscan.load(exported_run / "export" / "model.onnx")
    assert onnx.backend_name == "onnxruntime" and onnx.explainable
    assert onnx.weights == exported_run / "model.safetensors"
    assert onnx.card["model"]["run_id"] == onnx.meta.run_id
    assert onnx.with_scope_check(False).files == onnx.files  # the API's per-request copy keeps them
    eager = pneumoscan.load(exported_run)
    assert eager.backend_name == "torch" and eager.weights == exported_run / "model.safetensors"
    assert eager.card is None and eager.explainable
    lonely = tmp_path / "lonely.onnx"
    shutil.copyfile(exported_run / "export" / "model.onnx", lonely)
    alone = pneumoscan.load(lonely)
    assert alone.weights is None and alone.card is None and not alone.explainable
    assert pneumoscan.load().card["files"]["onnx_sha256"]  # the bundled card


def test_the_torch_module_gives_predict_probas_probabilities_and_gradients(shared_data):
    """The network with its preprocessing and temperature, for torch users: same probabilities as
    predict_proba on real radiographs (PyTorch backend, within 1e-4), and hooks see gradients."""
    images = sorted((shared_data / "chest_xray" / "test" / "PNEUMONIA").glob("*.jpeg"))[:3]
    images += sorted((shared_data / "chest_xray" / "test" / "NORMAL").glob("*.jpeg"))[:3]
    model = pneumoscan.load(BUNDLED_DIR / WEIGHTS_FILE, device="cpu")
    assert model.backend_name == "torch" and model.meta.temperature not in (None, 1.0)
    expected = model.predict_proba(images)
    batch = torch.from_numpy(np.stack([model.preprocess(path) for path in images]))  # (N, 1, S, S) in [0, 1]
    module = model.torch_module()
    assert isinstance(module, torch.nn.Module) and not module.training
    with torch.no_grad():
        logits = module(batch)
    assert logits.shape == (len(images), 1)
    np.testing.assert_allclose(torch.sigmoid(logits)[:, 0].numpy(), expected, atol=1e-4)
    np.testing.assert_allclose(module.probabilities(batch)[:, 0].detach().numpy(), expected, atol=1e-4)
    assert len({round(float(p), 2) for p in expected}) > 1  # real, different scores, not a constant

    seen = []
    layer = next(m for m in module.modules() if isinstance(m, torch.nn.Conv2d))
    layer.register_full_backward_hook(lambda mod, grad_in, grad_out: seen.append(grad_out[0].abs().sum()))
    x = batch.clone().requires_grad_(True)
    module(x).sum().backward()
    assert seen and float(seen[0]) > 0 and x.grad is not None and float(x.grad.abs().sum()) > 0
    assert all(p.grad is not None for p in module.network.parameters() if p.requires_grad)
    # a copy: training it leaves the classifier's own network alone
    assert module.network is not model.backend.model
    # the files at their own size (224 px) are resized by the model's fit in torch: close to the decoder's
    # PIL resize and its rounding to 8 bits, not equal (0.013 at most on these images)
    full = np.stack([read_image(path, None, model.meta.fit) for path in images]).astype(np.float32)[:, None] / 255
    assert full.shape[-1] != model.image_size
    with torch.no_grad():
        resized = module.probabilities(torch.from_numpy(full))[:, 0].numpy()
    np.testing.assert_allclose(resized, expected, atol=0.02)


def test_an_onnx_model_gives_its_torch_module_from_the_weights_beside_it_or_says_what_is_missing(
        exported_run, tmp_path):
    onnx = pneumoscan.load(exported_run / "export" / "model.onnx")
    batch = np.random.default_rng(0).random((2, 1, onnx.image_size, onnx.image_size), dtype=np.float32)
    with torch.no_grad():
        p = onnx.torch_module().probabilities(torch.from_numpy(batch))[:, 0].numpy()
    np.testing.assert_allclose(p, onnx.predict_proba(batch), atol=1e-4)  # the export's parity tolerance
    lonely = tmp_path / "lonely.onnx"
    shutil.copyfile(exported_run / "export" / "model.onnx", lonely)
    with pytest.raises(ModelFileError, match=r"lonely.onnx: torch_module\(\) needs the PyTorch weights"):
        pneumoscan.load(lonely).torch_module()
    handmade = Classifier(onnx.backend, onnx.meta)
    with pytest.raises(ModelFileError, match="has no PyTorch weights"):
        handmade.torch_module()


def test_the_server_and_the_dicom_node_hold_the_classifier_the_api_returns(exported_run, tmp_path):
    from pneumoscan.dicom.processing import Processor
    from pneumoscan.serving.app import create_app, load_served

    model = pneumoscan.load(exported_run / "export" / "model.onnx")
    assert create_app(model).state.pneumoscan.model is model
    assert Processor(model, tmp_path / "out").classifier is model
    served = load_served(exported_run)  # what `pneumoscan serve RUN` holds: a Classifier, with its files
    assert isinstance(served, Classifier) and served.files == resolve_model(exported_run, prefer_onnx=True)
    node = Processor(exported_run, tmp_path / "node")
    assert isinstance(node.classifier, Classifier) and node.classifier.files == served.files


@pytest.mark.parametrize("fit", ["pad", "crop", "stretch"])
def test_the_torch_module_fits_an_image_as_the_decoder_does(fit):
    from PIL import Image

    from pneumoscan.data.image import resize
    from pneumoscan.inference.torch_module import CalibratedModule

    # a wide image: a grey left half, a white right half with a dark stripe near its right edge
    pixels = np.full((60, 100), 128, np.uint8)
    pixels[:, 50:] = 255
    pixels[:, 90:95] = 0
    module = CalibratedModule(torch.nn.Identity(), 32, fit, 1.0)
    fitted = module.resize(torch.from_numpy(pixels).float()[None, None] / 255)[0, 0].numpy() * 255
    expected = np.asarray(resize(Image.fromarray(pixels), 32, fit), dtype=np.float32)
    assert fitted.shape == expected.shape == (32, 32)
    # the same geometry (where the black margins and the stripe land); the resampling differs a little
    assert np.abs(fitted - expected).mean() < 8


def test_default_names_the_bundled_model_and_a_folder_of_that_name_is_given_as_a_path(tmp_path, monkeypatch):
    from pneumoscan.inference.model_files import is_model

    bundled = resolve_model()
    assert resolve_model("default") == bundled and bundled.bundled
    assert pneumoscan.load("default").files.bundled
    assert is_model("default")
    folder = tmp_path / "default"
    folder.mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelFileError, match="no model.safetensors in this folder"):
        resolve_model("./default")  # a path: the folder, not the bundled model


def test_only_a_folder_the_loader_can_load_counts_as_a_model(exported_run, tmp_path):
    """`predict FOLDER images` takes the folder as the model exactly when loading it can work."""
    from pneumoscan.inference.model_files import MODEL_SUFFIXES, is_model, split_model_and_inputs

    only_meta = tmp_path / "only-meta"
    only_meta.mkdir()
    shutil.copyfile(exported_run / "model.json", only_meta / "model.json")
    assert not is_model(only_meta)  # model.json alone: loading refuses it, so it is an image folder
    assert split_model_and_inputs([str(only_meta), "x.jpeg"], None) == (None, [str(only_meta), "x.jpeg"])
    assert is_model(exported_run) and all(is_model(tmp_path / f"m{suffix}") for suffix in MODEL_SUFFIXES)
    assert split_model_and_inputs(["default", "x.jpeg"], None) == ("default", ["x.jpeg"])


def test_pneumoscan_models_says_onnx_only_for_an_export_the_loader_uses(exported_run, tmp_path):
    from pneumoscan.inference.catalog import list_models

    runs_dir = tmp_path / "runs"
    run = shutil.copytree(exported_run, runs_dir / "run")
    entries = {e.name: e for e in list_models(runs_dir)}
    assert entries["default"].onnx and entries["run"].onnx
    meta = read_meta(run)
    meta.threshold = 0.9  # the run changed after its export: predict would not use the export
    model, _ = pneumoscan.models.load_model(run)
    save_model(run, model, meta)
    assert resolve_model(run, prefer_onnx=True).backend == "torch"
    assert not {e.name: e for e in list_models(runs_dir)}["run"].onnx


def test_backend_torch_scores_with_pytorch_or_says_why_it_cannot(exported_run, tmp_path, capsys):
    from helpers.synthetic import write_synthetic_image
    from pneumoscan.cli import main

    image = write_synthetic_image(tmp_path / "chest.png", 1, seed=1, size=96)
    assert main(["predict", "--backend", "torch", "--no-scope-check", str(image)]) == 0  # the bundled model
    assert "bundled default model (pneumoscan 0.1.0, torch)" in capsys.readouterr().out
    assert pneumoscan.load(backend="torch").backend_name == "torch"
    onnx = exported_run / "export" / "model.onnx"
    assert pneumoscan.load(onnx, backend="torch").backend_name == "torch"  # its weights are in its run
    lonely = shutil.copyfile(onnx, tmp_path / "lonely.onnx")
    assert main(["predict", "--backend", "torch", str(lonely), str(image)]) == 2
    assert "lonely.onnx: the torch backend needs the PyTorch weights" in capsys.readouterr().err
