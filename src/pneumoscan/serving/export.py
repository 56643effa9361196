"""Export a trained model to ONNX, with its preprocessing contract inside and a model card beside it.

``export_onnx(RUN)`` writes ``RUN/export/model.onnx``, ``model_card.json`` and ``model_card.md``. The graph
takes float32 ``(N, 1, S, S)`` images in [0, 1] (N dynamic) and returns ``logit`` and ``probability``
(``sigmoid(logit / temperature)``), both ``(N, 1)``, and for a model with a scope gate ``scope`` (its
distance and orientation log-probabilities, computed in the same pass); see :mod:`pneumoscan.inference.onnx_backend`.
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
PARITY_TOLERANCE = 1e-4  # largest allowed |p_onnx - p_torch| on the check batch


def export_onnx(model_path: str | os.PathLike, out_path: str | os.PathLike | None = None, *,
                opset: int = OPSET, check: bool = True) -> Path:
    """Export the model at ``model_path`` (run folder, ``.safetensors`` or ``.ckpt``) to ONNX.

    Writes the ONNX file (default ``RUN/export/model.onnx``) atomically as one self-contained file, with
    the full :class:`~pneumoscan.models.ModelMeta` and the readable input contract in its metadata,
    then ``model_card.json`` and ``model_card.md`` beside it. With ``check``, the graph is first run by
    ONNX Runtime on a batch of 3 and must agree with PyTorch within ``PARITY_TOLERANCE`` in probability,
    else :class:`ModelFileError` is raised and nothing is written. Returns the ONNX file's path.
    """
    import torch

    from pneumoscan.inference.onnx_backend import (
        INPUT_NAME,
        LOGIT_OUTPUT,
        PROBABILITY_OUTPUT,
        SCOPE_OUTPUT,
        onnx_metadata,
    )
    from pneumoscan.models import load_model
    from pneumoscan.models.scope import gate_of
    from pneumoscan.serving.model_card import write_model_card

    model_path = Path(model_path).expanduser()
    if model_path.suffix.lower() == ".onnx":
        raise ModelFileError(f"{model_path}: already an ONNX model; export from the run folder or .safetensors")
    model, meta = load_model(model_path)
    run_folder = run_folder_of(model_path)
    out = Path(out_path) if out_path is not None else export_file(run_folder)
    if out.suffix.lower() != ".onnx":
        raise ModelFileError(f"{out}: the exported model's name must end in .onnx")

    wrapper = _with_probability(model, float(meta.temperature or 1.0)).eval()
    size = int(meta.image_size)
    example = torch.rand(2, 1, size, size, generator=torch.Generator().manual_seed(0))
    batch = torch.export.Dim("batch", min=1, max=4096)
    with _quiet():
        program = torch.onnx.export(
            wrapper, (example,), dynamo=True, opset_version=opset, input_names=[INPUT_NAME],
            output_names=[LOGIT_OUTPUT, PROBABILITY_OUTPUT] + ([SCOPE_OUTPUT] if gate_of(model) is not None else []),
            dynamic_shapes=({0: batch},),
            external_data=False, optimize=True, verbose=False,
        )
    proto = program.model_proto
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


def _check_parity(data: bytes, wrapper, size: int, out: Path) -> None:
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
    if probability_gap > PARITY_TOLERANCE or logit_gap > 100 * PARITY_TOLERANCE or scope_gap > 100 * PARITY_TOLERANCE:
        raise ModelFileError(f"{out}: not written: ONNX Runtime and PyTorch disagree by {probability_gap:.2g} in "
                             f"probability (tolerance {PARITY_TOLERANCE}); please report this model")


def _with_probability(model, temperature: float):
    """The model wrapped so that the graph returns the logit, the calibrated probability and, for a model
    with a scope gate, the gate's output from the same pass."""
    from torch import nn

    from pneumoscan.models.scope import logit_and_scope

    class LogitAndProbability(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, image):
            logit, scope = logit_and_scope(self.model, image)
            if scope is None:
                return logit, (logit / temperature).sigmoid()
            return logit, (logit / temperature).sigmoid(), scope

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
