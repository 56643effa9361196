"""The ONNX Runtime backend: parity with PyTorch on real images, a light import path, refusing foreign files."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import pneumoscan
from pneumoscan.cli import main
from pneumoscan.errors import ModelFileError
from pneumoscan.inference.onnx_backend import load_onnx
from pneumoscan.models import save_model
from pneumoscan.runs import export_file

SIZE = 64


@pytest.fixture(scope="module")
def exported(exported_run) -> Path:
    """The ONNX file of the suite's exported run (a random 64 px mini-resnet, fit "pad", temperature 1.7)."""
    return export_file(exported_run)


def test_onnx_runtime_and_pytorch_agree_within_1e_4_on_real_images(exported, real_subset):
    files = sorted(real_subset.glob("train/*/*.jpeg"))[::4]
    torch_rows = pneumoscan.load(exported.parent.parent).predict(files)  # a run folder: PyTorch
    assert pneumoscan.load(exported.parent.parent).backend.name == "torch"
    onnx_rows = pneumoscan.load(exported).predict(files, batch_size=5)
    assert len(files) >= 10 and all(r.error is None for r in onnx_rows)
    p_torch = np.array([r.probability for r in torch_rows])
    p_onnx = np.array([r.probability for r in onnx_rows])
    assert np.max(np.abs(p_onnx - p_torch)) < 1e-4
    assert [r.label for r in onnx_rows] == [r.label for r in torch_rows]


def test_the_batch_axis_is_dynamic_and_images_are_scored_independently(exported):
    classifier = load_onnx(exported)
    images = np.random.default_rng(0).integers(0, 256, (7, SIZE, SIZE), dtype=np.uint8)
    all_at_once = classifier.predict_proba(images, batch_size=7)
    one_by_one = np.concatenate([classifier.predict_proba(images[i:i + 1]) for i in range(7)])
    np.testing.assert_allclose(all_at_once, one_by_one, atol=1e-6)


def test_the_model_meta_travels_inside_the_onnx_file(exported):
    meta = load_onnx(exported).meta
    original = pneumoscan.models.read_meta(exported.parent.parent)
    assert meta == original
    import onnx

    props = {p.key: p.value for p in onnx.load(str(exported)).metadata_props}
    assert (props["image_size"], props["fit"], props["channels"]) == (str(SIZE), "pad", "1")
    assert "/ 255" in props["scale"] and float(props["temperature"]) == pytest.approx(1.7)


def test_predict_on_an_onnx_model_imports_neither_torch_nor_lightning_nor_monai(exported, tmp_path):
    image = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (80, 80), dtype=np.uint8), "L").save(image)
    # Both ways in: the CLI (which builds every command's parser) and the Python API the server uses.
    script = textwrap.dedent(f"""
        import json, sys
        import pneumoscan
        from pneumoscan.cli import main
        code = main(["predict", {str(exported)!r}, {str(image)!r}, "--quiet"])
        row = pneumoscan.load({str(exported)!r}).predict([{str(image)!r}])[0]
        print(json.dumps({{"code": code, "p": row.probability, "error": row.error,
                          "loaded": [m for m in ("torch", "lightning", "monai") if m in sys.modules]}}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["code"] == 0 and result["error"] is None and 0.0 <= result["p"] <= 1.0
    assert result["loaded"] == []  # torch alone costs ~2 s of start-up: the cold-start aim needs it absent


def test_cli_predict_on_a_run_folder_uses_its_export_only_while_it_matches_the_model(exported, tmp_path, capsys):
    run = shutil.copytree(exported.parent.parent, tmp_path / "run")
    image = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (80, 80), dtype=np.uint8), "L").save(image)
    assert main(["predict", str(run), str(image)]) == 0
    assert "onnxruntime" in capsys.readouterr().out
    assert main(["predict", str(run), str(image), "--backend", "torch"]) == 0
    assert "torch)" in capsys.readouterr().out
    model, meta = pneumoscan.models.load_model(run)
    meta.threshold = 0.9  # the model changed after the export: the stale export must not be used
    save_model(run, model, meta)
    assert main(["predict", str(run), str(image)]) == 0
    assert "torch)" in capsys.readouterr().out


def test_an_onnx_model_that_is_not_ours_is_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "foreign",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    foreign = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(foreign))
    with pytest.raises(ModelFileError, match="foreign.onnx: .*not one of ours"):
        pneumoscan.load(foreign)


@pytest.mark.parametrize("content", [b"", b"\x80\x04K\x01.", b"definitely not protobuf" * 10])
def test_a_file_named_onnx_that_is_not_onnx_gives_a_one_line_error(tmp_path, content):
    fake = tmp_path / "model.onnx"
    fake.write_bytes(content)
    with pytest.raises(ModelFileError, match="model.onnx: not a loadable ONNX model") as info:
        pneumoscan.load(fake)
    assert "\n" not in str(info.value)


def _with_trained_batchnorm(network, images: np.ndarray, seed: int = 0):
    """``network`` with BatchNorm statistics measured on ``images`` and scales away from 1, as training
    leaves them (a fresh layer is the identity, which no fold could change), its weights rounded to float16
    as the bundled model's are."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    norms = [m for m in network.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # the plain mean over the batches seen
            norm.weight.copy_(torch.rand(norm.num_features, generator=generator) + 0.5)
        network.train()(torch.from_numpy(images))
        for parameter in network.parameters():
            if parameter.ndim >= 2:
                parameter.copy_(parameter.half().float())
    return network.eval()


def test_an_export_with_float16_weights_computes_as_pytorch_does_within_1e_4(tmp_path, real_subset):
    """The graph keeps the model's own float16 weights: BatchNorm is not folded into them at export (a
    fold rounds the folded weights to float16 again, 0.014 in probability on the bundled model)."""
    import torch

    from pneumoscan.data import read_image
    from pneumoscan.models import ModelMeta, build_model
    from pneumoscan.serving.export import export_onnx

    files = sorted(real_subset.glob("train/*/*.jpeg"))[:24]
    pixels = np.stack([read_image(f, SIZE, "stretch") for f in files])[:, None].astype(np.float32) / 255
    torch.manual_seed(0)
    network = _with_trained_batchnorm(build_model("mini-resnet", SIZE), pixels)
    save_model(tmp_path / "run", network, ModelMeta(name="mini-resnet", image_size=SIZE, fit="stretch", run_id="f16"))
    onnx_file = export_onnx(tmp_path / "run", float16_weights=True)
    p_onnx = np.array([r.probability for r in pneumoscan.load(onnx_file).predict(files)])
    p_torch = np.array([r.probability for r in pneumoscan.load(tmp_path / "run").predict(files)])
    assert np.ptp(p_torch) > 0.01  # the images are told apart: a wrong input could not pass
    assert np.max(np.abs(p_onnx - p_torch)) < 1e-4


def test_float16_storage_refuses_weights_that_are_not_float16_values(tmp_path):
    import torch

    from pneumoscan.models import ModelMeta, build_model
    from pneumoscan.serving.export import export_onnx

    torch.manual_seed(0)
    save_model(tmp_path / "run", build_model("mini-resnet", SIZE), ModelMeta(name="mini-resnet", image_size=SIZE))
    with pytest.raises(ModelFileError, match="not float16-exact"):
        export_onnx(tmp_path / "run", float16_weights=True)
    assert not export_file(tmp_path / "run").exists()
