"""The model shipped in the package: its files match its card, it scores the card's reference images as
the card says with both backends, and `predict`, `serve`, `load()` and `models` use it with no model given."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import pneumoscan
from pneumoscan.bundled import BUNDLED_DIR, CARD_JSON, CARD_MARKDOWN, ONNX_FILE, WEIGHTS_FILE
from pneumoscan.cli import main
from pneumoscan.inference import resolve_model
from pneumoscan.provenance import DISCLAIMER, sha256_file

REPO = Path(__file__).resolve().parents[2]
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def card() -> dict:
    return bundled_card()


def bundled_card() -> dict:
    return resolve_model().read_card()


def test_the_shipped_files_are_the_ones_the_card_describes(card):
    files = card["files"]
    assert sha256_file(BUNDLED_DIR / ONNX_FILE) == files["onnx_sha256"]
    assert sha256_file(BUNDLED_DIR / WEIGHTS_FILE) == files["safetensors_sha256"]
    total = sum((BUNDLED_DIR / n).stat().st_size for n in (ONNX_FILE, WEIGHTS_FILE, CARD_JSON, CARD_MARKDOWN))
    # An ImageNet-pretrained EfficientNet-Lite0 (3.4 M parameters, stored as float16) with its scope gate.
    assert total < 20 * 2**20, f"the bundle is {total / 2**20:.1f} MiB; keep it under 20 MiB"


def test_the_card_says_what_the_model_is_for_how_it_was_measured_and_what_it_must_not_do(card):
    assert card["disclaimer"] == DISCLAIMER
    markdown = (BUNDLED_DIR / CARD_MARKDOWN).read_text(encoding="utf-8")
    assert DISCLAIMER in markdown
    assert "Kermany" in card["training_data"]["dataset"] and "paediatric" in card["training_data"]["population"]
    assert "one centre" in card["training_data"]["population"]
    assert "Research only" in card["scope"] and "adults" in card["scope"] and "lateral" in card["scope"]
    point = card["operating_point"]
    assert point["threshold"] == pytest.approx(pneumoscan.load().threshold)
    assert "validation" in point["how_chosen"]
    # the rule's name, and what it has given where nothing was tuned, in both forms of the card
    assert point["name"] == "sens95-median" and "0.95" in point["expected"] and "other half" in point["expected"]
    assert point["expected"] in markdown
    evaluation = card["metrics"]["evaluation"]
    assert evaluation["interval_unit"] == "patient" and "chest_xray/test" in evaluation["report"]
    for name in ("roc_auc", "sensitivity at the threshold", "specificity at the threshold"):
        figure = evaluation["figures"][name]
        assert figure["low"] <= figure["value"] <= figure["high"], name
        assert f"| {name} |" in markdown
    assert card["build"]["recipe"] and card["build"]["command"].startswith("python bench/build_default_model.py")
    text = json.dumps(card)
    assert "/work/" not in text and "/home/" not in text, "no machine's absolute paths in the card"


def test_the_card_names_no_build_run_and_no_path_outside_the_package(card):
    """The bundled model is `default`, not the build's work run; data paths are the dataset's own."""
    assert card["model"]["run_id"] is None
    markdown = (BUNDLED_DIR / CARD_MARKDOWN).read_text(encoding="utf-8")
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
    # the generator's own step, on what a build gives it
    from pneumoscan.bundled.card import packaged

    raw = {**card, "model": {**card["model"], "run_id": "run"},
           "training_data": {**card["training_data"], "data_root": "../shared/data/chest_xray"},
           "provenance": {**card["provenance"], "config": {**card["provenance"]["config"], "run_name": "run",
                                                           "out": "bench/out/default-model"}}}
    assert packaged(raw) == card


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_the_shipped_model_gives_the_card_scores_on_the_shared_images(card, shared_data, backend):
    # The probabilities are the classifier's: the scope gate (tested on its own) must not hide one.
    model = (pneumoscan.load(scope_check=False) if backend == "onnxruntime"
             else pneumoscan.load(BUNDLED_DIR / WEIGHTS_FILE, scope_check=False))
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
    from pneumoscan.serving.model_card import served_card

    assert build_parser().parse_args(["serve"]).model is None  # the command accepts no MODEL
    served = load_served(BUNDLED_DIR)
    assert served.backend_name == "onnxruntime" and served.explainable
    card = served_card(served)
    assert card["files"]["onnx_sha256"] == bundled_card()["files"]["onnx_sha256"]
    assert card["disclaimer"] == DISCLAIMER
