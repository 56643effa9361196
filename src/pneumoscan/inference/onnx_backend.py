"""Score images with an exported ONNX model through ONNX Runtime, without torch, Lightning or MONAI.

The contract of a pneumoscan ONNX file (written by :func:`pneumoscan.serving.export.export_onnx`; in words,
:func:`input_contract` and :func:`output_contract`, which the model card and the file's metadata repeat):

- input ``image``: float32 ``(N, 1, S, S)``, NCHW, grey ``uint8 / 255``, made as the decoder makes it
  (:data:`GREY`, :func:`resize_text`: Pillow's bilinear resize, antialiased); N is dynamic. Per-image
  standardisation is inside the graph.
- outputs ``logit`` ``(N, 1)`` and ``probability`` ``(N, 1)`` = ``sigmoid(logit / temperature)``; a model with a
  scope gate also ``scope`` ``(N, K)`` (:func:`scope_columns`): the distance to the training radiographs'
  features, the log-probability of each orientation and, for a gate with the kind probe, of each kind of
  image: K = 13 (7 for a gate without the kind probe; :mod:`pneumoscan.models.scope_meta`, read by
  :mod:`pneumoscan.inference.scope`).
- a model with a subtype head also ``viral_logit`` ``(N, 1)`` and ``viral_probability`` ``(N, 1)`` =
  ``sigmoid(viral_logit / subtype temperature)``: the probability that a pneumonia is viral rather than
  bacterial (:mod:`pneumoscan.models.subtype_meta`; meaningful for PNEUMONIA answers only).
- ``metadata_props``: ``pneumoscan`` holds the full :class:`~pneumoscan.models.ModelMeta` JSON; readable
  keys (``image_size``, ``fit``, ``resize``, ``grey``, ``scale``, ``outputs``, ``threshold``, ...) repeat
  the contract for other tools.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from pneumoscan.errors import ModelFileError, reason
from pneumoscan.inference.classifier import Classifier
from pneumoscan.models.artifact import META_KEY, ModelMeta

INPUT_NAME = "image"
LOGIT_OUTPUT = "logit"
PROBABILITY_OUTPUT = "probability"
SCOPE_OUTPUT = "scope"
VIRAL_LOGIT_OUTPUT = "viral_logit"
VIRAL_PROBABILITY_OUTPUT = "viral_probability"


class OnnxBackend:
    """An ONNX Runtime session that returns one logit per image (the same contract as the torch backend)."""

    name = "onnxruntime"

    def __init__(self, path: str | os.PathLike, threads: int | None = None, device: str | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        # Threads that wait for work sleep instead of spinning: a spinning thread burns a core that
        # predict's decoding processes need (measured: half of the CPU time of a light network's run).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        available = ort.get_available_providers()
        wanted = ["CPUExecutionProvider"]
        if device != "cpu" and "CUDAExecutionProvider" in available:
            wanted.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=wanted)
        except Exception as exc:  # onnxruntime raises its own types (InvalidProtobuf, Fail, ...)
            raise ModelFileError(f"{path}: not a loadable ONNX model ({reason(exc)})") from None
        self.input = self.session.get_inputs()[0].name
        self.outputs = [o.name for o in self.session.get_outputs()]

    def logits(self, batch: np.ndarray) -> np.ndarray:
        out = self.session.run([LOGIT_OUTPUT], {self.input: np.ascontiguousarray(batch, dtype=np.float32)})[0]
        return np.asarray(out, dtype=np.float32).reshape(-1)

    def scores(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """(logits (N,), the ``scope`` output (N, K) or None, the ``viral_logit`` output (N,) or None), one run."""
        names = [LOGIT_OUTPUT] + [n for n in (SCOPE_OUTPUT, VIRAL_LOGIT_OUTPUT) if n in self.outputs]
        got = dict(zip(names, self.session.run(names, {self.input: np.ascontiguousarray(batch, dtype=np.float32)}),
                       strict=True))
        scope, viral = got.get(SCOPE_OUTPUT), got.get(VIRAL_LOGIT_OUTPUT)
        return (np.asarray(got[LOGIT_OUTPUT], dtype=np.float32).reshape(-1),
                None if scope is None else np.asarray(scope, dtype=np.float32).reshape(len(batch), -1),
                None if viral is None else np.asarray(viral, dtype=np.float32).reshape(-1))

    def metadata(self) -> dict[str, str]:
        return dict(self.session.get_modelmeta().custom_metadata_map)


# The provenance key of an int8 model's metadata (pneumoscan.serving.quantize): how it was quantised, and
# the digest of the float model's metadata it was made from.
INT8_KEY = "int8"
INT8_BACKEND = "onnxruntime-int8"  # the backend name of an int8 graph's classifier


def load_onnx(path: str | os.PathLike, device: str | None = None, threads: int | None = None) -> Classifier:
    """Load an ONNX model exported by pneumoscan, with its :class:`ModelMeta` read from the file.

    Raises :class:`ModelFileError` when the file is missing, is not ONNX, or is an ONNX model without
    pneumoscan metadata (someone else's model: its input contract is unknown, so it is refused).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelFileError(f"{path}: no such ONNX model file")
    backend = OnnxBackend(path, threads=threads, device=device)
    meta = read_onnx_meta(backend.metadata(), path)
    if meta.provenance.get(INT8_KEY):
        backend.name = INT8_BACKEND  # every answer says which graph scored it
    if LOGIT_OUTPUT not in backend.outputs:
        raise ModelFileError(f"{path}: ONNX model has no '{LOGIT_OUTPUT}' output (has {backend.outputs}); "
                             "re-export it with 'pneumoscan export'")
    _check_scope_output(backend, meta, path)
    if meta.subtype and VIRAL_LOGIT_OUTPUT not in backend.outputs:
        raise ModelFileError(f"{path}: its metadata describes a subtype head but the graph has no "
                             f"'{VIRAL_LOGIT_OUTPUT}' output; re-export it with 'pneumoscan export'")
    return Classifier(backend, meta)


def _check_scope_output(backend: OnnxBackend, meta: ModelMeta, path: Path) -> None:
    """A graph whose metadata describes a scope gate has its ``scope`` output, as wide as the gate's."""
    from pneumoscan.models.scope_meta import output_width

    if not meta.scope:
        return
    if SCOPE_OUTPUT not in backend.outputs:
        raise ModelFileError(f"{path}: its metadata describes a scope gate but the graph has no '{SCOPE_OUTPUT}' "
                             "output; re-export it with 'pneumoscan export'")
    shape = next(o.shape for o in backend.session.get_outputs() if o.name == SCOPE_OUTPUT)
    width = shape[-1] if shape else None
    if isinstance(width, int) and width != output_width(meta.scope):
        raise ModelFileError(f"{path}: its '{SCOPE_OUTPUT}' output has {width} columns, its metadata describes "
                             f"{output_width(meta.scope)}; re-export it with 'pneumoscan export'")


def read_onnx_meta(props: dict[str, str], path: str | os.PathLike = "<onnx>") -> ModelMeta:
    """The :class:`ModelMeta` stored in an ONNX model's ``metadata_props``."""
    if META_KEY not in props:
        raise ModelFileError(f"{path}: an ONNX model without pneumoscan metadata; not one of ours "
                             "(export models with 'pneumoscan export RUN --format onnx')")
    return ModelMeta.from_json(props[META_KEY], path)


# How every input is made grey before the resize (data.image._to_grayscale, DICOM's decoder).
GREY = ("decoded to 8-bit grey: a colour image by Pillow's convert('L') (ITU-R 601-2 luma, L = R * 299/1000 + "
        "G * 587/1000 + B * 114/1000), transparency first composited on black; 16-bit images scaled by their "
        "range; DICOM through its modality and VOI transforms (window, else range), MONOCHROME1 inverted")


def resize_text(meta: ModelMeta) -> str:
    """How an image becomes ``S`` x ``S`` for ``meta`` (:func:`pneumoscan.data.image.resize`), in words a
    user of the ONNX file alone can follow. Another filter changes the probabilities (Pillow's default,
    bicubic, moves them by up to 0.49 on the test radiographs)."""
    size = int(meta.image_size)
    pil = ("Pillow's Image.resize(..., Image.Resampling.BILINEAR, reducing_gap=3.0) on the 8-bit grey image: "
           "a bilinear (triangle) filter widened by the scale factor, i.e. antialiased, after a box "
           "reduction by a whole factor where the image shrinks more than 3 times; the result is uint8")
    how = {"stretch": f"stretched to {size} x {size} (aspect ratio not kept)",
           "pad": f"scaled so that its longer side is {size} px (the other side rounded), then pasted on a "
                  f"black {size} x {size} square at ((S - width) // 2, (S - height) // 2)",
           "crop": f"scaled so that its shorter side is {size} px (the other side rounded), then its central "
                   f"{size} x {size} square kept (from ((width - S) // 2, (height - S) // 2))"}
    return f"{how.get(meta.fit, meta.fit)}; resized with {pil}"


def scope_columns(meta: ModelMeta) -> list[str]:
    """What each column of the ``scope`` output holds, from the model's own gate statistics
    (``ModelMeta.scope``, :mod:`pneumoscan.models.scope_meta`): the distance, one log-probability per
    orientation, then one per kind of image for a gate with the kind probe. Empty for a model without a gate."""
    from pneumoscan.models.scope_meta import ORIENTATIONS, kinds_of

    gate = meta.scope or {}
    if not gate:
        return []
    return (["distance to the training radiographs' features (Mahalanobis; refused above "
             f"{float(gate.get('distance_threshold', float('nan'))):.2f})"]
            + [f"log p({name})" for name in ORIENTATIONS]
            + [f"log p(kind: {name})" for name in kinds_of(gate)])


def input_contract(meta: ModelMeta) -> dict[str, object]:
    """The input, in words: what to feed the graph's ``image`` input (the card's ``input`` section)."""
    size = int(meta.image_size)
    return {**meta.preprocessing, "grey": GREY, "resize": resize_text(meta),
            "tensor": f"{INPUT_NAME}: float32 (N, 1, {size}, {size}), N any"}


def output_contract(meta: ModelMeta) -> dict[str, str]:
    """Every output of the graph: name -> shape and meaning."""
    outputs = {LOGIT_OUTPUT: "float32 (N, 1): the raw score",
               PROBABILITY_OUTPUT: f"float32 (N, 1) = sigmoid(logit / temperature), temperature "
                                   f"{float(meta.temperature or 1.0):g}: the probability of {meta.class_names[1]}"}
    columns = scope_columns(meta)
    if columns:
        outputs[SCOPE_OUTPUT] = (f"float32 (N, {len(columns)}): the scope gate, columns "
                                 + "; ".join(f"{i}: {c}" for i, c in enumerate(columns))
                                 + " (pneumoscan.inference.scope decides from them and the thresholds in the "
                                   "model's metadata)")
    if meta.subtype:
        temperature = float(meta.subtype["temperature"])
        outputs[VIRAL_LOGIT_OUTPUT] = ("float32 (N, 1): the subtype head's logit that the pneumonia is viral rather "
                                       "than bacterial, before the subtype temperature")
        outputs[VIRAL_PROBABILITY_OUTPUT] = (f"float32 (N, 1) = sigmoid(viral_logit / subtype temperature), temperature "
                                             f"{temperature:g}: the calibrated probability that the pneumonia is viral; "
                                             "meaningful only for a PNEUMONIA answer")
    return outputs


def onnx_metadata(meta: ModelMeta) -> dict[str, str]:
    """The ``metadata_props`` written into an exported model: the full meta and readable contract keys."""
    from pneumoscan.provenance import DISCLAIMER

    contract = input_contract(meta)
    return {
        META_KEY: meta.to_json(),
        "image_size": str(contract["size"]),
        "fit": str(contract["fit"]),
        "channels": str(contract["channels"]),
        "layout": str(contract["layout"]),
        "dtype": str(contract["dtype"]),
        "scale": str(contract["scale"]),
        "grey": str(contract["grey"]),
        "resize": str(contract["resize"]),
        "normalisation": str(contract["normalisation"]),
        "input": str(contract["tensor"]),
        "outputs": "; ".join(f"{name}: {text}" for name, text in output_contract(meta).items()),
        "temperature": repr(float(meta.temperature or 1.0)),
        "threshold": repr(float(meta.threshold)),
        "class_names": ",".join(meta.class_names),
        "model_name": meta.name,
        "disclaimer": DISCLAIMER,
    }
