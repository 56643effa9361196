"""Export a trained model to ONNX, with its preprocessing contract inside and a model card beside it.

``export_onnx(RUN)`` writes ``RUN/export/model.onnx``, ``model_card.json`` and ``model_card.md``. The graph
takes float32 ``(N, 1, S, S)`` images in [0, 1] (N dynamic) and returns ``logit`` and ``probability``
(``sigmoid(logit / temperature)``), both ``(N, 1)``, and for a model with a scope gate ``scope`` (its
distance and orientation log-probabilities, computed in the same pass); see :mod:`pneumoscan.inference.onnx_backend`.

The graph keeps each BatchNormalization apart from its convolution, as PyTorch computes it: folding them
together at export would change the weights it stores (and, stored as float16, round them a second time:
up to 0.014 in probability on the test radiographs). ONNX Runtime folds them itself when it loads the
graph, in float32, from the same weights PyTorch holds.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from pathlib import Path

import numpy as np

from pneumoscan._io import atomic_write_bytes
from pneumoscan.errors import ModelFileError
from pneumoscan.runs import export_file, run_folder_of

OPSET = 18  # the opset the torch.export-based exporter targets natively; ONNX Runtime >= 1.14 runs it
PARITY_TOLERANCE = 1e-4  # largest allowed |p_onnx - p_torch| on the check batch, float16 weights included


def export_onnx(model_path: str | os.PathLike | None, out_path: str | os.PathLike | None = None, *,
                opset: int = OPSET, check: bool = True, float16_weights: bool = False) -> Path:
    """Export the model at ``model_path`` (run folder, ``.safetensors`` or ``.ckpt``; ``default`` or None: the
    bundled model's weights, written to ``runs/default/export/``) to ONNX.

    Writes the ONNX file (default ``RUN/export/model.onnx``) atomically as one self-contained file, with
    the full :class:`~pneumoscan.models.ModelMeta` and the readable input contract in its metadata,
    then ``model_card.json`` and ``model_card.md`` beside it. With ``check``, the graph is first run by
    ONNX Runtime on a batch of 3 and must agree with PyTorch within ``PARITY_TOLERANCE`` in probability,
    else :class:`ModelFileError` is raised and nothing is written. Returns the ONNX file's path.

    ``float16_weights`` stores the weights as float16 (half the file, float32 arithmetic; see
    :func:`store_float16_weights`); the model's weights must already hold float16 values (the bundled
    model's are rounded before it is measured), so that both backends compute from the same numbers.
    """
    import torch

    from pneumoscan.inference.model_card import write_model_card
    from pneumoscan.inference.model_files import resolve_model
    from pneumoscan.inference.onnx_backend import (
        INPUT_NAME,
        LOGIT_OUTPUT,
        PROBABILITY_OUTPUT,
        SCOPE_OUTPUT,
        VIRAL_LOGIT_OUTPUT,
        VIRAL_PROBABILITY_OUTPUT,
        onnx_metadata,
    )
    from pneumoscan.models import load_model
    from pneumoscan.models.scope_gate import gate_of
    from pneumoscan.models.subtype_head import subtype_of

    if str(model_path).lower().endswith(".onnx"):
        raise ModelFileError(f"{model_path}: already an ONNX model; export from the run folder or .safetensors")
    files = resolve_model(model_path, backend="torch")  # `default`: the bundled weights, exported to runs/default
    model, meta = load_model(files.path)
    run_folder = files.run_folder if files.bundled else run_folder_of(files.path)
    out = Path(out_path) if out_path is not None else export_file(run_folder)
    if out.suffix.lower() != ".onnx":
        raise ModelFileError(f"{out}: the exported model's name must end in .onnx")

    wrapper = _with_probability(model, float(meta.temperature or 1.0),
                                float(meta.subtype.get("temperature", 1.0))).eval()
    size = int(meta.image_size)
    example = torch.rand(2, 1, size, size, generator=torch.Generator().manual_seed(0))
    batch = torch.export.Dim("batch", min=1, max=4096)
    with _quiet():
        program = torch.onnx.export(
            wrapper, (example,), dynamo=True, opset_version=opset, input_names=[INPUT_NAME],
            output_names=[LOGIT_OUTPUT, PROBABILITY_OUTPUT] + ([SCOPE_OUTPUT] if gate_of(model) is not None else [])
            + ([VIRAL_LOGIT_OUTPUT, VIRAL_PROBABILITY_OUTPUT] if subtype_of(model) is not None else []),
            dynamic_shapes=({0: batch},),
            external_data=False, optimize=False, verbose=False,
        )
        proto = _simplified(program.model)
    if float16_weights:
        store_float16_weights(proto, model_path)
    # The exporter records each node's Python stack trace and source names: the exporting machine's paths,
    # which a shipped model file must not carry. The graph itself does not depend on them.
    for node in [*proto.graph.node, *(n for function in proto.functions for n in function.node)]:
        del node.metadata_props[:]
        node.doc_string = ""
    proto.doc_string = f"pneumoscan {meta.name} at {size}px. NOT a medical device; not for diagnosis."
    del proto.metadata_props[:]
    for key, value in onnx_metadata(meta).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    data = proto.SerializeToString()
    if check:  # before writing: a graph that disagrees with PyTorch must never replace a good export
        _check_parity(data, wrapper, size, out)
    atomic_write_bytes(out, data)
    write_model_card(out.parent, meta, run_folder=run_folder, onnx_file=out)
    return out


def _simplified(model):
    """The exported graph with its constants folded and its unused nodes removed, as the exporter's own
    ``optimize`` does, but without its rewrite rules, which fuse each BatchNormalization into the
    convolution before it (see the module docstring)."""
    import onnx_ir as ir
    from onnx_ir.passes import common
    from onnxscript.optimizer import fold_constants

    fold_constants(model)
    ir.passes.PassManager([
        common.RemoveUnusedNodesPass(), common.RemoveUnusedFunctionsPass(), common.RemoveUnusedOpsetsPass(),
        common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        common.DeduplicateInitializersPass(), common.CommonSubexpressionEliminationPass(),
    ])(model)
    return ir.serde.serialize_model(model)


def store_float16_weights(proto, source: str | os.PathLike = "<model>") -> int:
    """Store every float32 weight tensor of 2 or more dimensions as float16, cast back to float32 by a
    ``Cast`` node; return how many.

    ONNX Runtime folds the casts when it loads the graph, so it computes in float32 at the same speed:
    half the file. The values must be float16 values already (else :class:`ModelFileError` names the
    tensor): the file then holds exactly the weights PyTorch computes with. Biases, BatchNorm statistics,
    the per-image constants, the scope gate's statistics and the subtype head stay float32.
    """
    from onnx import TensorProto, helper, numpy_helper

    graph = proto.graph
    kept, casts = [], []
    for tensor in graph.initializer:
        values = numpy_helper.to_array(tensor)
        # The scope gate's statistics stay float32 (its distance is compared with a threshold), and so does the
        # subtype head, a probe fitted after the network's weights were rounded.
        if values.dtype == np.float32 and values.ndim >= 2 and not {"scope", "subtype"} & set(tensor.name.split(".")):
            if not np.array_equal(values.astype(np.float16).astype(np.float32), values):
                raise ModelFileError(f"{source}: weight {tensor.name} is not float16-exact; round the model's "
                                     "weights to float16 before exporting them as float16")
            half = numpy_helper.from_array(values.astype(np.float16), f"{tensor.name}__float16")
            kept.append(half)
            casts.append(helper.make_node("Cast", [half.name], [tensor.name], to=TensorProto.FLOAT))
        else:
            kept.append(tensor)
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = [*casts, *graph.node]
    del graph.node[:]
    graph.node.extend(nodes)
    return len(casts)


def _check_parity(data: bytes, wrapper, size: int, out: Path, tolerance: float = PARITY_TOLERANCE) -> None:
    """Run the serialized graph in ONNX Runtime and compare both outputs with PyTorch."""
    import onnxruntime as ort
    import torch

    probe = torch.rand(3, 1, size, size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = [t.numpy() for t in wrapper(probe)]
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: probe.numpy()})
    logit_gap = float(np.max(np.abs(got[0] - expected[0])))
    probability_gap = float(np.max(np.abs(got[1] - expected[1])))
    # The scope output: relative to its size (distances run to tens), the same tolerance as a logit.
    scope_gap = max((float(np.max(np.abs(g - e) / (1.0 + np.abs(e)))) for g, e in zip(got[2:], expected[2:], strict=True)),
                    default=0.0)
    if probability_gap > tolerance or logit_gap > 100 * tolerance or scope_gap > 100 * tolerance:
        raise ModelFileError(f"{out}: not written: ONNX Runtime and PyTorch disagree by {probability_gap:.2g} in "
                             f"probability (tolerance {tolerance}); please report this model")


def _with_probability(model, temperature: float, subtype_temperature: float = 1.0):
    """The model wrapped so that the graph returns the logit, the calibrated probability and, for a model
    with a scope gate, the gate's output, and for a model with a subtype head, the viral logit and its
    calibrated probability, all from the same pass."""
    from torch import nn

    from pneumoscan.models.subtype_head import model_outputs

    class LogitAndProbability(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, image):
            logit, scope, viral = model_outputs(self.model, image)
            outputs = [logit, (logit / temperature).sigmoid()] + ([] if scope is None else [scope])
            if viral is not None:
                outputs += [viral, (viral / subtype_temperature).sigmoid()]
            return tuple(outputs)

    return LogitAndProbability()


@contextlib.contextmanager
def _quiet():
    """The exporter prints its progress and deprecation notes; a CLI user needs none of it."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "onnxscript", "torch._dynamo")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
