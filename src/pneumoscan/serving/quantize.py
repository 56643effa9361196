"""Static int8 quantisation of an exported ONNX model (ONNX Runtime's QDQ format, per-channel weights).

Only the backbone is quantised: the nodes that compute the penultimate features (the input of the linear
layer that gives ``logit``), from the fourth convolution on (:data:`FLOAT_CONVS`). Everything after those
features stays float32: the classifier's linear layer, the scope gate (its Mahalanobis distance is compared
with a threshold fitted on float features, and its probes), any other head, and the probability. The
per-image standardisation and the first three convolutions stay float32 too. No output is assumed beyond
``logit`` and ``probability``: a head added after the features stays float whatever it is called.

:func:`quantize_graph` turns a float graph into an int8 one; :func:`export_int8` (``pneumoscan export MODEL
--int8``) also gives the int8 graph its own temperature and operating points, re-fitted on validation
images from its own outputs, and writes it beside the float model with its card.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pneumoscan import runs
from pneumoscan._io import atomic_write_bytes
from pneumoscan.errors import ConfigError, DatasetError, ImageReadError, ModelFileError, reason
from pneumoscan.inference.onnx_backend import INT8_KEY, LOGIT_OUTPUT, PROBABILITY_OUTPUT

if TYPE_CHECKING:
    from pneumoscan.data.records import Sample
    from pneumoscan.inference.classifier import Classifier
    from pneumoscan.models.artifact import ModelMeta

CALIBRATION_IMAGES = 300  # training images the activation ranges are measured on (min-max: a few hundred suffice)
SEED = 0  # which training images calibrate: fixed, so that two exports of one model give one graph
BATCH = 32
# The first convolutions stay float (the stem and, for EfficientNet-Lite, its first block: about 3 % of its
# multiply-adds at 128 px): quantising them too moved the bundled model's validation probabilities by up to
# 0.16 at the 99th percentile (0.04 with these 3 float, 0.06 with 4), as their errors compound downstream.
FLOAT_CONVS = 3
LINEAR_OPS = ("Gemm", "MatMul")
# (the model's metadata, validation labels, the int8 graph's sigmoid(logit) on them) -> the metadata with
# its temperature, threshold and operating points re-fitted: the training's own rule
# (pneumoscan.training.metrics.refit_on_validation), given by the caller, as serving may not import training.
Refit = Callable[["ModelMeta", np.ndarray, np.ndarray], "ModelMeta"]


@dataclass(frozen=True)
class Int8Export:
    """What :func:`export_int8` wrote and measured."""

    path: Path  # the int8 ONNX model
    meta: ModelMeta  # its metadata: the float model's, with the re-fitted temperature and operating points
    calibration_images: int
    validation_images: int  # scored by both graphs (the refit's images)
    label_agreement: float  # share of them given the same label (or the same refusal) by both graphs
    refusals_changed: int  # of them, refused by one graph's scope gate and not the other's


def export_int8(onnx_file: str | os.PathLike, refit: Refit, data: str | os.PathLike | None = None,
                out: str | os.PathLike | None = None, *, images: int = CALIBRATION_IMAGES,
                seed: int = SEED, float_convs: int = FLOAT_CONVS) -> Int8Export:
    """Quantise the float ONNX model ``onnx_file`` (exported by pneumoscan) to int8 and write it with its
    card (default: ``model.int8.onnx`` beside it, :func:`pneumoscan.runs.int8_file`).

    Calibration: ``images`` training images (seeded). Re-fit: the int8 graph scores the validation images,
    and ``refit`` chooses its temperature and operating points from them by the training's rule. Both come
    from the run's ``split.csv`` (the images it was trained and validated on), else from ``data``: a
    manifest with ``train`` and ``val`` rows, or a dataset folder, split by patient with the validation
    share and seed recorded in the model's config (the split training made when it carved validation by
    patient, as for the bundled model). Raises :class:`ConfigError` when neither is there. The first
    ``float_convs`` convolutions stay float (:data:`FLOAT_CONVS`).
    """
    from pneumoscan.inference.classifier import Classifier
    from pneumoscan.inference.model_files import meta_digest
    from pneumoscan.inference.onnx_backend import OnnxBackend, load_onnx

    onnx_file = Path(onnx_file)
    float_model = load_onnx(onnx_file, device="cpu")
    if float_model.meta.provenance.get(INT8_KEY):
        raise ModelFileError(f"{onnx_file}: already an int8 model; quantise the float model it was made from")
    if float_model.meta.provenance.get("calibration"):  # see model_card.threshold_rule
        raise ConfigError(f"{onnx_file}: a site-calibrated version, whose threshold was fitted on the site's images "
                          "for the float graph; quantise the run it was calibrated from instead")
    out = Path(out) if out is not None else runs.int8_file(onnx_file)
    if out.suffix.lower() != ".onnx" or out.resolve() == onnx_file.resolve():
        raise ModelFileError(f"{out}: the int8 model needs a file name of its own, ending in .onnx")
    train, val = _samples(float_model.meta, onnx_file, data)
    calibration = _decoded(float_model, random.Random(seed).sample(train, min(images, len(train))))
    graph, quantised = quantize_graph(onnx_file.read_bytes(), _batches(np.stack(list(calibration.values()))),
                                      str(onnx_file), float_convs)
    decoded = _decoded(float_model, val)
    names, batch = list(decoded), np.stack(list(decoded.values()))
    labels = np.array([s.label for s in val if str(s.path) in decoded], dtype=int)
    with tempfile.TemporaryDirectory(prefix="pneumoscan-int8-") as tmp:
        (Path(tmp) / runs.ONNX).write_bytes(graph)
        backend = OnnxBackend(Path(tmp) / runs.ONNX, device="cpu")
        raw = 1.0 / (1.0 + np.exp(-np.concatenate([backend.logits(part) for part in _batches(batch)])))
        meta = refit(float_model.meta, labels, raw)
        agreement, changed = _agreement(Classifier(backend, meta).assess(batch, names), float_model.assess(batch, names))
    record = {"format": "static QDQ (ONNX Runtime quantize_static): uint8 activations, min-max ranges; "
                        "per-channel int8 weights",
              "quantised": f"{len(quantised)} nodes of the backbone, from its convolution {float_convs + 1} on; the "
                           "layers after the penultimate features (classifier, scope gate, any other head), the "
                           "per-image standardisation and the first convolutions stay float32",
              "calibration": f"{len(calibration)} training images, seed {seed}",
              "refit": f"temperature and operating points re-fitted on {len(labels)} validation images from "
                       "the int8 graph's own outputs, by the training's rule",
              "validation_label_agreement": round(agreement, 4), "validation_refusals_changed": changed,
              "float_model": meta_digest(json.loads(float_model.meta.to_json()))}
    meta = replace(meta, provenance={**meta.provenance, INT8_KEY: record})
    atomic_write_bytes(out, _finished(graph, meta, str(onnx_file)))
    _write_card(out, meta, onnx_file)
    return Int8Export(out, meta, len(calibration), len(labels), agreement, changed)


def _samples(meta: ModelMeta, onnx_file: Path, data: str | os.PathLike | None) -> tuple[list[Sample], list[Sample]]:
    """(labelled training images, labelled validation images) for the model: see :func:`export_int8`."""
    from pneumoscan.data import load_dataset, split_by_patient
    from pneumoscan.data.defaults import TEST_FRACTION, VAL_FRACTION
    from pneumoscan.data.manifest import load_manifest

    run = runs.find_run(onnx_file)
    split = runs.split_file(run) if data is None and run is not None else None
    source = Path(data) if data is not None else split
    if source is None:
        raise ConfigError(f"{onnx_file}: no {runs.SPLIT} in its run folder to calibrate and re-fit on; give the "
                          "training data (--int8-data DATA: a dataset folder, or a manifest with train and val rows)")
    if source.is_dir():
        config = meta.provenance.get("config") if isinstance(meta.provenance.get("config"), dict) else {}
        samples = split_by_patient(load_dataset(source).samples, float(config.get("val_fraction", VAL_FRACTION)),
                                   int(config.get("seed", 0)), float(config.get("test_fraction", TEST_FRACTION)))
    else:
        samples = load_manifest(source).samples
    train = [s for s in samples if s.split == "train" and s.label is not None]
    val = [s for s in samples if s.split == "val" and s.label is not None]
    if not train or len({s.label for s in val}) < 2:
        raise DatasetError(f"{source}: needs labelled training images and validation images of both classes "
                           f"(found {len(train)} training, {len(val)} validation)")
    return train, val


def _decoded(model: Classifier, samples: list[Sample]) -> dict[str, np.ndarray]:
    """{path: model input} of the samples that decode (an undecodable image is left out, as training does)."""
    decoded = {}
    for sample in samples:
        try:
            decoded[str(sample.path)] = model.preprocess(sample.path)
        except ImageReadError:
            continue
    if not decoded:
        raise DatasetError(f"none of the {len(samples)} images could be decoded (first: {samples[0].path})")
    return decoded


def _batches(images: np.ndarray) -> Iterator[np.ndarray]:
    return (images[i:i + BATCH] for i in range(0, len(images), BATCH))


def _agreement(rows, others) -> tuple[float, int]:
    """(share of the images given the same label or the same refusal, images refused by one gate only)."""
    same = [(a.error is None) == (b.error is None) and a.label == b.label for a, b in zip(rows, others, strict=True)]
    changed = sum((a.error is None) != (b.error is None) for a, b in zip(rows, others, strict=True))
    return float(np.mean(same)), changed


def _finished(graph: bytes, meta: ModelMeta, source: str) -> bytes:
    """The int8 graph with the re-fitted temperature in its ``probability`` output and ``meta`` (and the
    readable contract keys) in its metadata, as :func:`pneumoscan.serving.export.export_onnx` writes them."""
    import onnx

    from pneumoscan.inference.onnx_backend import onnx_metadata

    proto = onnx.load_from_string(graph)
    set_temperature(proto, float(meta.temperature or 1.0), source)
    proto.doc_string = f"pneumoscan {meta.name} at {meta.image_size}px, int8. NOT a medical device; not for diagnosis."
    del proto.metadata_props[:]
    record = meta.provenance[INT8_KEY]
    readable = {**onnx_metadata(meta), INT8_KEY: f"{record['format']}; {record['quantised']}; {record['refit']}"}
    for key, value in readable.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return proto.SerializeToString()


def _write_card(out: Path, meta: ModelMeta, onnx_file: Path) -> None:
    from pneumoscan.inference.model_card import write_model_card

    run = runs.find_run(onnx_file)
    write_model_card(out.parent, meta, run_folder=run, onnx_file=out, names=runs.card_names(out))


def quantize_graph(float_graph: bytes, batches: Iterable[np.ndarray], source: str = "<model>",
                   float_convs: int = FLOAT_CONVS) -> tuple[bytes, list[str]]:
    """(the int8 graph of ``float_graph``, the names of the nodes it quantised), calibrated on ``batches``
    of model input (float32 ``(N, 1, S, S)``): static QDQ, uint8 activations, per-channel int8 weights,
    min-max calibration. Raises :class:`ModelFileError` when the graph has no linear layer before ``logit``.

    uint8 activations with int8 weights (U8S8) are ONNX Runtime's fast path on x86 (its VNNI and AVX2
    kernels): ``bench/bench_int8.py`` measured the bundled model's network at 1,233 images/s so against 547
    float (2026-12-08), where with int8 activations (S8S8) it had measured 681 against 599 (2026-12-07).

    Min-max, not entropy or percentile: those keep every activation of every calibration image in memory
    (3.2 GB for 128 images of the bundled model) and changed the bundled model's test answers by one image.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    proto = onnx.load_from_string(float_graph)
    _float32_weights(proto)
    with tempfile.TemporaryDirectory(prefix="pneumoscan-int8-") as tmp:
        plain, prepared, quantised = (Path(tmp) / name for name in ("float.onnx", "prepared.onnx", "int8.onnx"))
        onnx.save(proto, plain)
        # ONNX Runtime's own preparation: shapes inferred and BatchNormalization folded into the convolutions
        # (in float32, before the weights are quantised), as its quantiser expects.
        quant_pre_process(str(plain), str(prepared))
        prepared_proto = onnx.load(prepared)
        _name_nodes(prepared_proto)
        backbone = backbone_nodes(prepared_proto, source, float_convs)
        onnx.save(prepared_proto, prepared)
        input_name = prepared_proto.graph.input[0].name

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.batches: Iterator[np.ndarray] = iter(batches)

            def get_next(self) -> dict[str, np.ndarray] | None:
                batch = next(self.batches, None)
                return None if batch is None else {input_name: np.ascontiguousarray(batch, dtype=np.float32)}

        try:
            quantize_static(str(prepared), str(quantised), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_quantize=backbone,
                            calibrate_method=CalibrationMethod.MinMax)
        except Exception as exc:  # ONNX Runtime raises its own types, and ValueError for a graph it cannot handle
            raise ModelFileError(f"{source}: ONNX Runtime could not quantise this graph ({reason(exc)})") from None
        return quantised.read_bytes(), backbone


def backbone_nodes(proto, source: str = "<model>", float_convs: int = 0) -> list[str]:
    """The names of the nodes that compute the penultimate features, from convolution ``float_convs`` + 1 on
    (in the graph's order; the first when ``float_convs`` is 0).

    The features are the data input of the linear layer (``Gemm`` or ``MatMul``) nearest ``logit``; the
    nodes kept are those the features depend on, less those that convolution's input depends on (the
    per-image standardisation, and the ``float_convs`` convolutions before it)."""
    graph = proto.graph
    producer = {out: node for node in graph.node for out in node.output}
    initializers = {t.name for t in graph.initializer}
    linear = _nearest(producer, LOGIT_OUTPUT, lambda node: node.op_type in LINEAR_OPS)
    if linear is None:
        raise ModelFileError(f"{source}: no Gemm or MatMul computes '{LOGIT_OUTPUT}'; not a graph pneumoscan "
                             "can quantise")
    features = next(name for name in linear.input if name not in initializers)
    feature_nodes = _ancestors(producer, features)
    convs = [n for n in graph.node if n.op_type == "Conv" and id(n) in feature_nodes]
    if len(convs) <= float_convs:
        raise ModelFileError(f"{source}: {len(convs)} convolutions before the features; not a graph pneumoscan "
                             "can quantise")
    before = _ancestors(producer, *[i for i in convs[float_convs].input if i not in initializers])
    return [n.name for n in graph.node if id(n) in feature_nodes and id(n) not in before]


def _nearest(producer: dict, output: str, wanted) -> object | None:
    """The first node that ``wanted`` accepts on the way back from ``output``, breadth first."""
    queue, seen = [output], set()
    while queue:
        node = producer.get(queue.pop(0))
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if wanted(node):
            return node
        queue.extend(node.input)
    return None


def _ancestors(producer: dict, *tensors: str) -> set[int]:
    """The ids of the nodes that compute ``tensors``, themselves included."""
    found: set[int] = set()
    stack = list(tensors)
    while stack:
        node = producer.get(stack.pop())
        if node is not None and id(node) not in found:
            found.add(id(node))
            stack.extend(node.input)
    return found


def _name_nodes(proto) -> None:
    """Give every node a unique name: the quantiser selects nodes by name."""
    used: set[str] = set()
    for i, node in enumerate(proto.graph.node):
        if not node.name or node.name in used:
            node.name = f"{node.op_type}_{i}"
        used.add(node.name)


def _float32_weights(proto) -> None:
    """Undo :func:`pneumoscan.serving.export.store_float16_weights`: each float16 weight cast to float32 by a
    ``Cast`` node becomes a float32 weight again (the quantiser reads weights from initializers)."""
    from onnx import TensorProto, numpy_helper

    graph = proto.graph
    halves = {t.name: t for t in graph.initializer if t.data_type == TensorProto.FLOAT16}
    casts = [n for n in graph.node if n.op_type == "Cast" and len(n.input) == 1 and n.input[0] in halves]
    for cast in casts:
        values = numpy_helper.to_array(halves[cast.input[0]]).astype(np.float32)
        graph.initializer.append(numpy_helper.from_array(values, cast.output[0]))
        graph.node.remove(cast)
    _drop_unused(graph, set(halves))


def set_temperature(proto, temperature: float, source: str = "<model>") -> None:
    """Make the graph's ``probability`` output ``sigmoid(logit / temperature)`` with this temperature."""
    from onnx import numpy_helper

    graph = proto.graph
    producer = {out: node for node in graph.node for out in node.output}
    sigmoid = producer.get(PROBABILITY_OUTPUT)
    divide = producer.get(sigmoid.input[0]) if sigmoid is not None and sigmoid.op_type == "Sigmoid" else None
    if divide is None or divide.op_type != "Div" or divide.input[0] != LOGIT_OUTPUT:
        raise ModelFileError(f"{source}: '{PROBABILITY_OUTPUT}' is not sigmoid({LOGIT_OUTPUT} / temperature); "
                             "re-export the model with 'pneumoscan export'")
    name = f"{PROBABILITY_OUTPUT}.temperature"
    old, divide.input[1] = divide.input[1], ""
    _drop_unused(graph, {old, name})
    graph.initializer.append(numpy_helper.from_array(np.array(temperature, dtype=np.float32), name))
    divide.input[1] = name


def _drop_unused(graph, names: set[str]) -> None:
    """Remove the initializers of ``names`` that no node reads any more."""
    used = {name for node in graph.node for name in node.input}
    kept = [t for t in graph.initializer if t.name not in names or t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
