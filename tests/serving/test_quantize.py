"""`pneumoscan export MODEL --int8`: a quantised backbone, float heads, its own temperature and threshold,
loaded only when asked for."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from helpers.shared import once_per_run
from helpers.synthetic import write_synthetic_image
from pneumoscan import runs
from pneumoscan.cli import main
from pneumoscan.errors import ConfigError, ModelFileError
from pneumoscan.inference import load, resolve_model
from pneumoscan.inference.onnx_backend import INT8_KEY, LOGIT_OUTPUT, PROBABILITY_OUTPUT, SCOPE_OUTPUT
from pneumoscan.serving.quantize import FLOAT_CONVS, backbone_nodes, export_int8, quantize_graph
from pneumoscan.training.metrics import refit_on_validation

QDQ = ("QuantizeLinear", "DequantizeLinear")


def _synthetic_data(root: Path) -> Path:
    """20 patients per class, 2 images each: training images to calibrate on, validation carved by patient."""
    for i in range(20):
        for j in range(2):
            write_synthetic_image(root / "train" / "NORMAL" / f"IM-{i:04d}-000{j}.png", 0, seed=10 * i + j)
            write_synthetic_image(root / "train" / "PNEUMONIA" / f"person{i}_bacteria_{j}.png", 1, seed=1000 + 10 * i + j)
    return root


@pytest.fixture(scope="module")
def int8_run(gated_run, tmp_path_factory) -> Path:
    """The suite's gated run (64 px mini-resnet with a scope gate, exported) with its int8 graph beside the
    float one, calibrated and re-fitted on synthetic radiographs."""
    run = tmp_path_factory.mktemp("int8") / "run"
    shutil.copytree(gated_run, run)
    data = _synthetic_data(run.parent / "data")
    export_int8(runs.export_file(run), refit_on_validation, data, images=40)
    return run


def _consumers_of(graph, tensor: str) -> list:
    """Every node that depends on ``tensor``, directly or through others."""
    found, frontier = [], {tensor}
    for node in graph.node:  # the graph is topologically sorted
        if frontier.intersection(node.input):
            found.append(node)
            frontier.update(node.output)
    return found


def test_only_the_backbone_is_quantised_and_every_head_after_the_features_stays_float(gated_run):
    proto = onnx.load(runs.export_file(gated_run))
    graph = proto.graph
    linear = next(n for n in graph.node if LOGIT_OUTPUT in n.output)
    features = linear.input[0]
    # A third head on the penultimate features, as a subtype head would add: nothing may assume two outputs.
    width = numpy_helper.to_array(next(t for t in graph.initializer if t.name == linear.input[1])).shape[-1]
    weight = numpy_helper.from_array(np.linspace(-1, 1, width, dtype=np.float32)[:, None], "viral.weight")
    graph.initializer.append(weight)
    graph.node.extend([helper.make_node("MatMul", [features, weight.name], ["viral.logit"]),
                       helper.make_node("Sigmoid", ["viral.logit"], ["viral"])])
    graph.output.append(helper.make_tensor_value_info("viral", onnx.TensorProto.FLOAT, ["batch", 1]))
    batches = [np.random.default_rng(i).random((8, 1, 64, 64), dtype=np.float32) for i in range(3)]

    quantised, names = quantize_graph(proto.SerializeToString(), batches)

    result = onnx.load_from_string(quantised)
    assert [o.name for o in result.graph.output] == [LOGIT_OUTPUT, PROBABILITY_OUTPUT, SCOPE_OUTPUT, "viral"]
    assert any(n.op_type in QDQ for n in result.graph.node), "nothing was quantised"
    after = _consumers_of(result.graph, features)
    assert {LOGIT_OUTPUT, SCOPE_OUTPUT, "viral", PROBABILITY_OUTPUT} <= {o for n in after for o in n.output}
    assert not [n.name for n in after if n.op_type in QDQ]
    assert not set(names) & {n.name for n in after}
    # The first convolutions stay float too: the first quantised one is FLOAT_CONVS + 1.
    dequantised = {o for n in result.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    convs = [n for n in result.graph.node if n.op_type == "Conv"]
    assert [bool(dequantised & set(n.input)) for n in convs[:FLOAT_CONVS + 1]] == [False] * FLOAT_CONVS + [True]
    # The gate's statistics and the heads' weights are the float ones, unchanged.
    before = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for tensor in result.graph.initializer:
        if "scope" in tensor.name or tensor.name == "viral.weight":
            assert tensor.data_type == onnx.TensorProto.FLOAT
            np.testing.assert_array_equal(numpy_helper.to_array(tensor), before[tensor.name])
    # ... and the extra head computes on the int8 graph's own float features.
    session = ort.InferenceSession(quantised, providers=["CPUExecutionProvider"])
    viral, = session.run(["viral"], {"image": batches[0]})
    assert viral.shape == (8, 1) and np.all((viral > 0) & (viral < 1))


def test_a_graph_without_a_linear_layer_before_its_logit_is_refused(gated_run):
    proto = onnx.load(runs.export_file(gated_run))
    for node in proto.graph.node:
        if node.op_type in ("Gemm", "MatMul"):
            node.op_type = "Add"
    with pytest.raises(ModelFileError, match="no Gemm or MatMul"):
        backbone_nodes(proto, "m.onnx")


def test_the_int8_graph_carries_its_refitted_temperature_and_threshold_in_its_file_and_card(int8_run):
    int8_file = runs.int8_file(runs.export_file(int8_run))
    model = load(int8_file)
    record = model.meta.provenance[INT8_KEY]
    assert "calibration" in record and "40 training images" in record["calibration"]
    card = json.loads((int8_file.parent / "model_card.int8.json").read_text())
    assert card["output"]["threshold"] == model.meta.threshold and card["output"]["temperature"] == model.meta.temperature
    assert card["int8"]["refit"] == record["refit"] and "int8" in (int8_file.parent / "model_card.int8.md").read_text()
    assert model.files.card == int8_file.parent / "model_card.int8.json"
    # The float model's card is untouched, and its own.
    float_card = json.loads((int8_run / "export" / "model_card.json").read_text())
    assert "int8" not in float_card
    # The graph's own probability output uses the re-fitted temperature.
    batch = np.random.default_rng(0).random((4, 1, 64, 64), dtype=np.float32)
    logit, probability = model.backend.session.run([LOGIT_OUTPUT, PROBABILITY_OUTPUT], {"image": batch})
    np.testing.assert_allclose(probability, 1 / (1 + np.exp(-logit / model.meta.temperature)), rtol=1e-5)


def test_a_run_folder_is_scored_by_its_float_graph_unless_the_int8_one_is_asked_for(int8_run, capsys):
    export = runs.export_file(int8_run)
    assert resolve_model(int8_run, prefer_onnx=True).path == export
    assert resolve_model(export).path == export
    int8 = resolve_model(int8_run, backend="onnx-int8")
    assert int8.path == runs.int8_file(export) and int8.weights == int8_run / runs.MODEL
    assert resolve_model(export, backend="onnx-int8").path == runs.int8_file(export)
    assert resolve_model(runs.int8_file(export)).path == runs.int8_file(export)  # by its name
    image = str(int8_run / "train" / "0.png")
    assert main(["predict", str(int8_run), image, "--backend", "onnx-int8"]) == 0
    assert "onnxruntime-int8" in capsys.readouterr().out
    assert load(int8_run, prefer_onnx=True).backend_name == "onnxruntime"  # the float graph


def test_asking_for_a_missing_or_stale_int8_graph_names_the_command_that_makes_it(int8_run, gated_run, tmp_path):
    with pytest.raises(ModelFileError, match="--int8"):
        resolve_model(gated_run, backend="onnx-int8")
    retrained = tmp_path / "run"
    shutil.copytree(int8_run, retrained)
    meta = json.loads((retrained / runs.MODEL_JSON).read_text())
    (retrained / runs.MODEL_JSON).write_text(json.dumps({**meta, "threshold": 0.25}))
    with pytest.raises(ModelFileError, match="stale"):
        resolve_model(retrained, backend="onnx-int8")


def test_cli_export_int8_calibrates_and_refits_on_the_runs_own_split_file(gated_run, tmp_path, capsys):
    from pneumoscan.data import load_dataset, write_manifest

    run = tmp_path / "run"
    shutil.copytree(gated_run, run)
    samples = load_dataset(_synthetic_data(tmp_path / "data")).samples
    # Validation: three patients of each class (12 images); only the run's split.csv says where the data is.
    patients = {label: sorted({s.patient_id for s in samples if s.label == label}) for label in (0, 1)}
    val = set(patients[0][:3] + patients[1][:3])
    write_manifest([s.with_split("val" if s.patient_id in val else "train") for s in samples], run / runs.SPLIT)

    assert main(["export", str(run), "--int8", "--int8-images", "16"]) == 0

    printed = capsys.readouterr()
    int8_file = runs.int8_file(runs.export_file(run))
    assert str(int8_file) in printed.out and str(int8_file.parent / "model_card.int8.md") in printed.out
    record = load(int8_file).meta.provenance[INT8_KEY]
    assert record["calibration"].startswith("16 training images")
    assert "on 12 validation images" in record["refit"] and "re-fitted on 12 validation images" in printed.err


def test_int8_options_without_int8_are_refused_before_anything_is_exported(gated_run, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    assert main(["export", str(gated_run), "--out", str(out), "--int8-data", str(tmp_path)]) == 2
    assert main(["export", str(gated_run), "--out", str(out), "--int8", "--int8-images", "0"]) == 2
    assert "--int8-data goes with --int8" in capsys.readouterr().err and not out.exists()


def test_a_site_calibrated_version_is_not_quantised_with_a_validation_threshold(gated_run, tmp_path):
    proto = onnx.load(runs.export_file(gated_run))
    entry = next(p for p in proto.metadata_props if p.key == "pneumoscan")
    meta = json.loads(entry.value)
    entry.value = json.dumps({**meta, "provenance": {**meta.get("provenance", {}), "calibration": {"rule": "site"}}})
    onnx.save(proto, tmp_path / runs.ONNX)
    with pytest.raises(ConfigError, match="site-calibrated"):
        export_int8(tmp_path / runs.ONNX, refit_on_validation, tmp_path)


def test_without_a_split_file_or_data_the_int8_export_asks_for_the_training_data(gated_run):
    with pytest.raises(ConfigError, match="give the training data"):
        export_int8(runs.export_file(gated_run), refit_on_validation)


# -- the bundled model, quantised on the real data ---------------------------------------------------------------
@pytest.fixture(scope="session")
def bundled_int8(shared_data, tmp_path_factory) -> Path:
    """The bundled model's int8 graph, calibrated on its training images and re-fitted on its validation
    patients (chest_xray split by patient as its training split it): made once per run (about 30 s)."""
    from pneumoscan.bundled import BUNDLED_DIR, ONNX_FILE

    def make(folder: Path) -> None:
        export_int8(BUNDLED_DIR / ONNX_FILE, refit_on_validation, shared_data / "chest_xray",
                    folder / runs.int8_file(ONNX_FILE).name)

    return once_per_run(tmp_path_factory, "bundled-int8", make) / runs.int8_file(runs.ONNX).name


def _made_as_export_default_int8(int8: Path) -> Path:
    """The int8 graph ``int8`` and its card where `pneumoscan export default --int8` writes them (under the
    working folder's runs/default/export/); returns the graph's path there."""
    made = runs.int8_file(runs.export_file(Path(runs.RUNS_DIR) / "default"))
    made.parent.mkdir(parents=True)
    for file in (int8, int8.parent / "model_card.int8.json"):
        shutil.copyfile(file, made.parent / file.name)
    return made


def _answers(model, files: list[Path]) -> list[tuple[bool, str | None]]:
    """(refused, label) of each file, as predict gives them."""
    return [(row.error is not None, row.label) for row in model.predict(files)]


def test_the_int8_bundled_model_gives_the_float_models_labels_on_the_test_radiographs(bundled_int8, shared_data):
    test = sorted((shared_data / "chest_xray" / "test").glob("*/*.jpeg"))
    float_answers, int8_answers = _answers(load(), test), _answers(load(bundled_int8), test)
    same = np.mean([a == b for a, b in zip(float_answers, int8_answers, strict=True)])
    # Measured: all 318 (probabilities up to 0.22 apart, 0.024 at the 99th percentile). Quantising from the
    # first convolution on instead gave 315, and from the fifth 314: a few images sit near the threshold.
    assert same >= 0.995, f"the int8 graph gives the float model's answer to {same:.2%} of the test radiographs"


def test_the_bundled_int8_threshold_is_refitted_on_its_validation_patients_and_read_back(bundled_int8):
    float_meta, int8 = load().meta, load(bundled_int8)
    # The same validation patients as the float model's training chose its threshold on (551 images).
    assert int8.meta.val_metrics["images"] == float_meta.val_metrics["images"]
    assert int8.meta.threshold != float_meta.threshold and int8.meta.temperature != float_meta.temperature
    card = json.loads((bundled_int8.parent / "model_card.int8.json").read_text())
    metadata = int8.backend.metadata()
    assert card["output"]["threshold"] == int8.meta.threshold == float(metadata["threshold"])
    assert float(metadata["temperature"]) == int8.meta.temperature
    assert "re-fitted on the int8 graph's own outputs" in card["output"]["threshold_rule"]


def test_the_bundled_models_int8_graph_is_used_only_when_asked_for_once_made(bundled_int8, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # `pneumoscan export default --int8` writes to runs/default/export/
    with pytest.raises(ModelFileError, match="export default --int8"):
        resolve_model(None, backend="onnx-int8")
    made = _made_as_export_default_int8(bundled_int8)

    files = resolve_model(None, backend="onnx-int8")
    assert files.path == made and files.bundled and files.card == made.parent / "model_card.int8.json"
    assert files.weights == resolve_model(None).weights  # the bundled PyTorch weights, for Grad-CAM
    assert resolve_model(None).path != made  # the float graph otherwise


def test_the_refit_given_the_float_models_own_outputs_gives_back_the_threshold_its_training_chose(shared_data):
    """The rule and the patients the int8 graph is re-fitted with are the training's: applied to the float
    graph's outputs they give back the bundled model's stored temperature and threshold (its weights were
    rounded to float16 after training, hence the small tolerance)."""
    from pneumoscan.data import load_dataset, split_by_patient

    model = load()
    config = model.meta.provenance["config"]
    samples = split_by_patient(load_dataset(shared_data / "chest_xray").samples, config["val_fraction"],
                               config["seed"], config["test_fraction"])
    val = [s for s in samples if s.split == "val"]
    logits = np.concatenate([model.backend.logits(np.stack([model.preprocess(s.path) for s in val[i:i + 64]]))
                             for i in range(0, len(val), 64)])

    refitted = refit_on_validation(model.meta, np.array([s.label for s in val]), 1 / (1 + np.exp(-logits)))

    assert len(val) == model.meta.val_metrics["images"] == 551
    assert refitted.temperature == pytest.approx(model.meta.temperature, abs=1e-3)
    assert refitted.threshold == pytest.approx(model.meta.threshold, abs=1e-3)
    assert refitted.val_metrics["sensitivity"] == model.meta.val_metrics["sensitivity"]


def test_the_int8_graphs_scope_gate_refuses_the_images_the_float_one_refuses(bundled_int8, shared_data, tmp_path):
    from PIL import Image, ImageOps

    sources = sorted((shared_data / "chest_xray" / "test").glob("*/*.jpeg"))[::8]
    files = []
    for name, change in (("upright", lambda im: im), ("rotated", lambda im: im.transpose(Image.Transpose.ROTATE_90)),
                         ("upside-down", lambda im: im.transpose(Image.Transpose.ROTATE_180)),
                         ("inverted", ImageOps.invert)):
        for source in sources:
            files.append(tmp_path / f"{name}-{source.name}")
            change(Image.open(source).convert("L")).save(files[-1])
    refused = [[r for r, _ in _answers(model, files)] for model in (load(), load(bundled_int8))]
    assert sum(refused[0]) > len(sources), "the float gate refuses too few of the turned images to compare"
    changed = sum(a != b for a, b in zip(*refused, strict=True))
    # Measured: none of the 160 (121 refused by both gates; 1 of 160 when the first convolutions were int8 too).
    assert changed <= 0.02 * len(files), f"{changed} of {len(files)} images refused by one gate only"


def test_predict_default_with_the_int8_backend_names_the_bundled_model(bundled_int8, shared_data, tmp_path,
                                                                         monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _made_as_export_default_int8(bundled_int8)
    image = sorted((shared_data / "chest_xray" / "test" / "PNEUMONIA").glob("*.jpeg"))[0]
    assert main(["predict", "default", str(image), "--backend", "onnx-int8"]) == 0
    out = capsys.readouterr().out
    assert "onnxruntime-int8" in out and "the bundled default model" in out  # named as its float graph is
