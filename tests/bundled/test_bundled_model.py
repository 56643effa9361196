"""The models shipped in the package (`default`, and `fast` once built): each one's files match its card, it
scores the card's reference images as the card says with both backends, and `predict`, `serve`, `load()`
and `models` use `default` with no model given. A bundled model this installation lacks is skipped, saying
how to build it."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import pneumoscan
from pneumoscan.bundled import (
    BUNDLED_DIR,
    CARD_JSON,
    CARD_MARKDOWN,
    MODELS,
    ONNX_FILE,
    WEIGHTS_FILE,
    folder,
    installed,
)
from pneumoscan.cli import main
from pneumoscan.inference import resolve_model
from pneumoscan.provenance import DISCLAIMER, sha256_file

REPO = Path(__file__).resolve().parents[2]
TOLERANCE = 1e-4


@pytest.fixture(scope="module", params=list(MODELS))
def bundle(request) -> tuple[str, Path, dict]:
    """(name, folder, card) of each bundled model this installation holds."""
    name = request.param
    if not installed(name):
        pytest.skip(f"the {name} model is not in this installation: python bench/build_default_model.py "
                    f"--which {name} builds it")
    return name, folder(name), resolve_model(name).read_card()


def bundled_card() -> dict:
    return resolve_model().read_card()


def _build_tool():
    """``bench/_bundled_card.py``, which writes the shipped card (a build tool: not part of the package)."""
    spec = importlib.util.spec_from_file_location("_bundled_card", REPO / "bench" / "_bundled_card.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_shipped_files_are_the_ones_the_card_describes(bundle):
    _, where, card = bundle
    files = card["files"]
    assert sha256_file(where / ONNX_FILE) == files["onnx_sha256"]
    assert sha256_file(where / WEIGHTS_FILE) == files["safetensors_sha256"]
    total = sum((where / n).stat().st_size for n in (ONNX_FILE, WEIGHTS_FILE, CARD_JSON, CARD_MARKDOWN))
    # An ImageNet-pretrained EfficientNet-Lite0 (3.4 M parameters, stored as float16) with its scope gate.
    assert total < 20 * 2**20, f"the bundle is {total / 2**20:.1f} MiB; keep it under 20 MiB"


def test_the_card_says_what_the_model_is_for_how_it_was_measured_and_what_it_must_not_do(bundle):
    name, where, card = bundle
    assert card["disclaimer"] == DISCLAIMER
    markdown = (where / CARD_MARKDOWN).read_text(encoding="utf-8")
    assert DISCLAIMER in markdown
    assert "Kermany" in card["training_data"]["dataset"] and "paediatric" in card["training_data"]["population"]
    assert "one centre" in card["training_data"]["population"]
    assert "Research only" in card["scope"] and "adults" in card["scope"] and "lateral" in card["scope"]
    point = card["operating_point"]
    assert point["threshold"] == pytest.approx(pneumoscan.load(name).threshold)
    assert "validation" in point["how_chosen"]
    # the rule's name, and what it has given where nothing was tuned, in both forms of the card
    assert point["name"] == "sens95-median" and "0.95" in point["expected"]
    assert ("other half" in point["expected"]) == (name == "default")  # measured for the default recipe only
    assert point["expected"] in markdown
    build = card["build"]
    assert build.get("bundle", "default") == name
    # a distilled model names its teacher, in both forms of the card
    teachers = [t["teacher"] for t in (build.get("teacher") or {}).get("models", [])]
    assert teachers == ([] if name == "default" else ["default"])
    assert all(f"teacher: `{t}`" in markdown for t in teachers)
    speed = card.get("speed")  # measured by the build (or --speed-only), with its command
    if speed:
        assert speed["images_per_second"] > 0 and speed["command"].startswith("python bench/build_default_model.py")
        assert f"measured by `{speed['command']}`" in markdown
    evaluation = card["metrics"]["evaluation"]
    assert evaluation["interval_unit"] == "patient" and "chest_xray/test" in evaluation["report"]
    for name in ("roc_auc", "sensitivity at the threshold", "specificity at the threshold"):
        figure = evaluation["figures"][name]
        assert figure["low"] <= figure["value"] <= figure["high"], name
        assert f"| {name} |" in markdown
    assert card["build"]["recipe"] and card["build"]["command"].startswith("python bench/build_default_model.py")
    text = json.dumps(card)
    assert "/work/" not in text and "/home/" not in text, "no machine's absolute paths in the card"


def test_the_card_names_no_build_run_and_no_path_outside_the_package(bundle):
    """The bundled model is `default` (or `fast`), not the build's work run; data paths are the dataset's own."""
    _, where, card = bundle
    assert card["model"]["run_id"] is None
    markdown = (where / CARD_MARKDOWN).read_text(encoding="utf-8")
    assert "run: " not in markdown.splitlines()[4]

    def strings(value):
        if isinstance(value, dict):
            return [s for v in value.values() for s in strings(v)]
        if isinstance(value, list):
            return [s for v in value for s in strings(v)]
        return [value] if isinstance(value, str) else []

    for text in [*strings(card), markdown]:
        assert "../" not in text, text
    assert card["training_data"]["data_root"] == "chest_xray"
    assert all(r["image"].startswith("chest_xray/test/") for r in card["reference_scores"])
    assert not {"out", "run_name"} & set(card["provenance"]["config"])
    # the generator's own step (a build tool, in bench/, not in the package), on what a build gives it
    packaged = _build_tool().packaged
    raw = {**card, "model": {**card["model"], "run_id": "run"},
           "training_data": {**card["training_data"], "data_root": "../shared/data/chest_xray"},
           "provenance": {**card["provenance"], "config": {**card["provenance"]["config"], "run_name": "run",
                                                           "out": "bench/out/default-model"}}}
    assert packaged(raw) == card


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_the_shipped_model_gives_the_card_scores_on_the_shared_images(bundle, shared_data, backend):
    name, where, card = bundle
    # The probabilities are the classifier's: the scope gate (tested on its own) must not hide one.
    model = (pneumoscan.load(name, scope_check=False) if backend == "onnxruntime"
             else pneumoscan.load(where / WEIGHTS_FILE, scope_check=False))
    assert model.backend.name == backend
    references = card["reference_scores"]
    assert len(references) >= 4
    files = [shared_data / r["image"].removeprefix("../shared/data/") for r in references]
    labels = {Path(r["image"]).parent.name for r in references}
    assert labels == {"NORMAL", "PNEUMONIA"}
    for row, reference in zip(model.predict(files), references, strict=True):
        assert row.probability is not None, row.error
        expected = reference["probability"] if backend == "onnxruntime" else reference["probability_torch"]
        assert row.probability == pytest.approx(expected, abs=TOLERANCE), reference["image"]


def test_load_without_a_model_uses_the_bundled_onnx_without_importing_torch():
    code = ("import sys, pneumoscan; m = pneumoscan.load(); "
            "print(m.backend.name, 'torch' in sys.modules, m.meta.name)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"}).stdout.split()
    assert out[:2] == ["onnxruntime", "False"]
    assert out[2] == bundled_card()["model"]["name"]


def test_predict_with_no_model_scores_with_the_bundled_one(tmp_path, capsys):
    from helpers.synthetic import write_synthetic_image

    # A synthetic picture is no radiograph of the training kind: the bundled model's scope gate refuses
    # it, so the probabilities are compared with the check off.
    image = write_synthetic_image(tmp_path / "chest.png", 1, seed=1, size=96)
    assert main(["predict", str(image)]) == 1
    assert "out of scope: unlike the training radiographs" in capsys.readouterr().out
    assert main(["predict", str(image), "--out", str(tmp_path / "out.csv"), "--no-scope-check"]) == 0
    out = capsys.readouterr().out
    assert "the bundled default model" in out
    expected = pneumoscan.load(scope_check=False).predict(image)[0].probability
    written = (tmp_path / "out.csv").read_text().splitlines()[1].split(",")
    assert float(written[1]) == pytest.approx(expected, abs=1e-6)
    assert main(["predict", str(image), "--no-scope-check"]) == 0  # without --out, the table on the terminal
    assert f"{expected:.4f}" in capsys.readouterr().out


def test_a_run_given_first_is_the_model_and_a_run_alone_is_refused(tmp_path, capsys):
    import torch

    from helpers.synthetic import write_synthetic_image
    from pneumoscan.models import ModelMeta, build_model, save_model

    torch.manual_seed(0)
    run = tmp_path / "runs" / "20260101-000000-seed-cnn"
    save_model(run, build_model("seed-cnn", 32), ModelMeta(name="seed-cnn", image_size=32, run_id="x"))
    image = write_synthetic_image(tmp_path / "chest.png", 1, seed=1, size=96)
    assert main(["predict", str(run), str(image)]) == 0
    assert "with seed-cnn (" in capsys.readouterr().out
    assert main(["predict", str(run)]) == 2
    assert "this is a model; give the images" in capsys.readouterr().err

    assert main(["models", "--runs", str(tmp_path / "runs")]) == 0
    listing = capsys.readouterr().out
    assert "default" in listing and "bundled" in listing
    val_auc = bundled_card()["metrics"]["validation"]["auc"]
    assert f"{val_auc:.4f}" in listing  # the bundled model's validation AUC, read from its model.json
    assert run.name in listing and "seed-cnn" in listing


def test_serve_with_no_model_serves_the_bundled_one_with_its_card():
    from pneumoscan.cli import build_parser
    from pneumoscan.serving.app import load_served
    from pneumoscan.serving.responses import served_card

    assert build_parser().parse_args(["serve"]).model is None  # the command accepts no MODEL
    served = load_served(BUNDLED_DIR)
    assert served.backend_name == "onnxruntime" and served.explainable
    card = served_card(served)
    assert card["files"]["onnx_sha256"] == bundled_card()["files"]["onnx_sha256"]
    assert card["disclaimer"] == DISCLAIMER


def test_every_command_that_takes_a_model_accepts_default(shared_data, tmp_path, capsys, monkeypatch):
    """`default` is the bundled model's name in `pneumoscan models`: every command takes it as MODEL."""
    from pneumoscan.cli import build_parser
    from pneumoscan.dicom.processing import Processor
    from pneumoscan.serving.app import load_served

    data = tmp_path / "data"
    for cls in ("NORMAL", "PNEUMONIA"):
        (data / "test" / cls).mkdir(parents=True)
        for image in sorted((shared_data / "chest_xray" / "test" / cls).glob("*.jpeg"))[:6]:
            (data / "test" / cls / image.name).symlink_to(image)
    image = next((data / "test" / "PNEUMONIA").iterdir())
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", "default", "--data", str(data), "--bootstrap", "20", "--gallery", "0",
                 "--out", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "report.json").is_file()
    assert main(["predict", "default", str(image)]) == 0
    assert "the bundled default model" in capsys.readouterr().out
    assert main(["explain", "default", str(image), "--out", str(tmp_path / "explain")]) == 0
    assert list((tmp_path / "explain").glob("*.png"))
    assert load_served("default").files.bundled  # serve default
    assert Processor("default", tmp_path / "node").classifier.files.bundled  # dicom listen / pull default
    parser = build_parser()
    for argv in (["serve", "default"], ["dicom", "listen", "default", "--out", "x"], ["calibrate", "default", "--data", "x"],
                 ["export", "default"]):
        assert resolve_model(parser.parse_args(argv).model).bundled, argv


@pytest.mark.slow
def test_export_default_writes_the_bundled_weights_to_runs_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["export", "default"]) == 0
    exported = pneumoscan.load(tmp_path / "runs" / "default" / "export" / ONNX_FILE)
    assert exported.meta == pneumoscan.load().meta


def _by_the_cards_words(card: dict, files: list[Path], where: Path) -> np.ndarray:
    """The bundled graph run with ONNX Runtime on images made as the card's input section says, with Pillow
    and numpy alone: what a user without pneumoscan does."""
    import onnxruntime as ort
    from PIL import Image

    contract = card["input"]
    size = int(contract["size"])
    # the card's words, checked so that this follows them rather than the decoder's code
    assert contract["fit"] == "stretch" and "stretched to" in contract["resize"]
    assert "Image.resize(..., Image.Resampling.BILINEAR, reducing_gap=3.0)" in contract["resize"]
    assert "convert('L')" in contract["grey"] and "/ 255" in contract["scale"]
    assert contract["layout"] == "NCHW" and contract["dtype"] == "float32"
    pixels = []
    for file in files:
        with Image.open(file) as image:
            grey = image.convert("L").resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
        pixels.append(np.asarray(grey, dtype=np.float32)[None] / 255)
    session = ort.InferenceSession(str(where / ONNX_FILE), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    outputs = dict(zip(names, session.run(names, {"image": np.stack(pixels)}), strict=True))
    for name, values in outputs.items():  # every output is described, with its real shape
        assert f"(N, {values.shape[1]})" in card["output"][name], name
    return outputs["probability"].reshape(-1)


def _predict_matches_the_cards_words(bundle: tuple[str, Path, dict], files: list[Path]) -> None:
    name, where, card = bundle
    expected = [row.probability for row in pneumoscan.load(name, scope_check=False).predict(files)]
    assert None not in expected
    got = _by_the_cards_words(card, files, where)
    assert np.max(np.abs(got - np.array(expected))) < 1e-4


def test_the_cards_input_contract_is_enough_to_run_the_onnx_file_as_predict_does(bundle, shared_data):
    files = sorted((shared_data / "chest_xray" / "test").glob("*/*.jpeg"))[::20]
    assert len(files) >= 15
    _predict_matches_the_cards_words(bundle, files)


@pytest.mark.slow
def test_the_cards_input_contract_holds_on_every_test_image(bundle, shared_data):
    _predict_matches_the_cards_words(bundle, sorted((shared_data / "chest_xray" / "test").glob("*/*.jpeg")))


def _exported_with_batchnorm_folded(where: Path) -> bool:
    import onnx

    graph = onnx.load(str(where / ONNX_FILE)).graph
    return not any(node.op_type == "BatchNormalization" for node in graph.node)


def test_both_shipped_files_give_the_same_probabilities_within_1e_4(bundle, shared_data):
    """ONNX Runtime and PyTorch compute from the same float16 weights (the export keeps BatchNorm apart)."""
    name, where, _ = bundle
    assert not _exported_with_batchnorm_folded(where), ("the bundled model.onnx folds BatchNorm into the convolutions "
                                                   "(it differs from PyTorch by up to 0.014): rebuild it with python "
                                                   "bench/build_default_model.py --export-only")
    files = sorted((shared_data / "chest_xray" / "test").glob("*/*.jpeg"))
    onnx = pneumoscan.load(name, scope_check=False)
    batch = np.stack([onnx.preprocess(f) for f in files])
    torch = pneumoscan.load(name, backend="torch", scope_check=False)
    gap = np.abs(onnx.predict_proba(batch) - torch.predict_proba(batch))
    assert gap.max() < 1e-4


def test_the_shipped_model_files_carry_no_machine_path(bundle):
    """The metadata inside the weights and the ONNX graph, not only the card, name no folder of the machine
    that built them (a student records its teacher: by its place in the package)."""
    import onnx
    from safetensors import safe_open

    _, where, _ = bundle
    with safe_open(str(where / "model.safetensors"), framework="pt") as fh:
        texts = [json.dumps(fh.metadata())]
    texts.append(json.dumps({p.key: p.value for p in onnx.load(str(where / "model.onnx")).metadata_props}))
    texts.append((where / "model.json").read_text(encoding="utf-8"))
    for text in texts:
        assert not any(root in text for root in ("/work/", "/home/", "/root/", "/tmp/", "/Users/")), text[:200]
