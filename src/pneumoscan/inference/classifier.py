"""The user-facing predictor: load a model once, score files, arrays or uploads.

A :class:`Classifier` wraps a backend; two give the same numbers: eager PyTorch
(:mod:`~pneumoscan.inference.torch_backend`) and ONNX Runtime (:mod:`~pneumoscan.inference.onnx_backend`).
:func:`pneumoscan.inference.load` (:mod:`~pneumoscan.inference.model_files`) picks one for a MODEL argument and
gives the classifier the files it came from (``files``: its PyTorch weights, its card, its run). The CLI,
the Python API, the server and the DICOM node all hold this one object. This module imports neither torch
nor ONNX Runtime, so the ONNX path never loads torch.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pneumoscan.data.image import read_pixels
from pneumoscan.data.radiograph import check_radiograph_pixels
from pneumoscan.errors import ImageReadError, ModelFileError
from pneumoscan.inference import scope
from pneumoscan.inference.decoding import decode_files, decode_input
from pneumoscan.inference.inputs import is_pil, list_inputs, pixels_of, split_batch
from pneumoscan.inference.rows import Prediction, Source, file_stat, result_rows

if TYPE_CHECKING:
    from pneumoscan.inference.torch_module import CalibratedModule

__all__ = ["Classifier", "ImageInput", "Prediction", "Sources"]

# A path, a file's bytes, a PIL image, or pixels (numpy array, torch tensor): see Classifier.preprocess.
ImageInput = str | os.PathLike | bytes | Any
# One of those, or an iterable of them: see Classifier.predict.
Sources = ImageInput | Iterable[ImageInput]


class Classifier:
    """A loaded model with its preprocessing contract, threshold and scope gate (scikit-learn-like, no fitting).

    ``scope_check`` (default on): images that are not frontal chest radiographs get no probability and no
    label (:mod:`pneumoscan.inference.scope`); off, they are scored and marked.

    ``files``: the :class:`~pneumoscan.inference.model_files.ModelFiles` it was loaded from (set by
    :func:`pneumoscan.load`; None for a classifier built by hand), which :attr:`weights`, :attr:`card` and
    :meth:`torch_module` read.
    """

    def __init__(self, backend, meta, scope_check: bool = True, files=None) -> None:
        # backend: .name, .logits(batch: float32 N x 1 x S x S) -> (N,), and optionally .scores(batch) ->
        # (logits (N,), the scope gate's output (N, K) or None, the subtype head's viral logits (N,) or None)
        self.backend = backend
        self.meta = meta
        self.scope_check = scope_check
        self.files = files  # ModelFiles | None (not imported: model_files builds classifiers)
        self._card: tuple[dict[str, Any] | None] | None = None

    def with_scope_check(self, scope_check: bool) -> Classifier:
        """This classifier (same backend, model and files) with the scope check on or off."""
        if scope_check == self.scope_check:
            return self
        other = Classifier(self.backend, self.meta, scope_check, self.files)
        other._card = self._card
        return other

    @property
    def backend_name(self) -> str:
        """``onnxruntime`` or ``torch``."""
        return getattr(self.backend, "name", type(self.backend).__name__)

    @property
    def weights(self) -> Path | None:
        """The PyTorch weights of this model (Grad-CAM, :meth:`torch_module`): the file loaded for the torch
        backend, ``model.safetensors`` beside an ONNX model or in its run folder; None when unknown."""
        return self.files.weights if self.files is not None else None

    @property
    def card(self) -> dict[str, Any] | None:
        """The model card written for this model (``model_card.json`` beside its ONNX file, or the bundled
        model's), read once; None when there is none."""
        if self._card is None:
            self._card = (self.files.read_card() if self.files is not None else None,)
        return self._card[0]

    @property
    def explainable(self) -> bool:
        """Whether Grad-CAM (and :meth:`torch_module`) can run: PyTorch weights are known or loaded."""
        return self.weights is not None or self.backend_name == "torch"

    def torch_module(self) -> CalibratedModule:
        """The model as a ``torch.nn.Module`` with its preprocessing and temperature, to hook or fine-tune.

        Its ``forward`` takes a float batch ``(N, 1, H, W)`` with grey values in [0, 1] (``uint8 / 255``; what
        :meth:`preprocess` gives, stacked) and returns the calibrated logits ``(N, 1)``, ``logit /
        temperature``: their sigmoid is :meth:`predict_proba`'s probability (``.probabilities(x)`` gives it).
        Other image sizes are made square and resized as the model's ``fit`` says (see
        :class:`~pneumoscan.inference.torch_module.CalibratedModule`). Per-image standardisation is inside the
        network. It is a copy, in eval mode, on the torch backend's device (else the CPU): training it
        changes neither this classifier nor its files.
        The scope gate is not applied. Works for the PyTorch backend, and for an ONNX model whose PyTorch
        weights are beside it (or in its run folder); otherwise, or when those weights are another model's,
        raises :class:`~pneumoscan.errors.ModelFileError` naming what is missing or different.
        """
        import copy

        from pneumoscan.inference.torch_module import CalibratedModule

        if self.backend_name == "torch":
            network = copy.deepcopy(self.backend.model)
        elif self.files is not None:
            network, meta = self.files.load_network("torch_module()")
            if _identity(meta) != _identity(self.meta):  # e.g. the run was retrained but not exported again
                raise ModelFileError(
                    f"{self.files.weights}: another model ({meta.name}, run {meta.run_id or '?'}) than "
                    f"{self.files.path.name} ({self.meta.name}, run {self.meta.run_id or '?'}); export the run "
                    "again so that both match")
        else:
            raise ModelFileError(f"{self.meta.name}: a {self.backend_name} model built by hand has no PyTorch weights; "
                                 "load it with pneumoscan.load(MODEL) from a run folder or with its model.safetensors")
        module = CalibratedModule(network, self.image_size, self.meta.fit, float(self.meta.temperature or 1.0))
        device = next((p.device for p in network.parameters()), None)  # the torch backend's device (cuda)
        return (module.to(device) if device is not None else module).eval()

    @property
    def scope_note(self) -> str | None:
        """Why the learned part of the scope gate is skipped for this model (it has none), else None."""
        return None if scope.has_gate(self.meta) else scope.NO_GATE_NOTE

    @property
    def threshold(self) -> float:
        return float(self.meta.threshold)

    @property
    def image_size(self) -> int:
        return int(self.meta.image_size)

    def __repr__(self) -> str:
        backend = self.backend_name
        return (f"Classifier(model={self.meta.name!r}, image_size={self.image_size}, fit={self.meta.fit!r}, "
                f"threshold={self.threshold:.4f}, backend={backend!r}, version={self.meta.version!r})")

    def preprocess(self, source: ImageInput, name: str | None = None) -> np.ndarray:
        """Decode one image into the model's input: float32 (1, S, S) in [0, 1].

        ``source`` is a path, a file's bytes, a PIL image, or the pixels as a numpy array or torch tensor
        ((H, W) or (H, W, C); see :func:`pneumoscan.data.image.read_pixels` for the accepted types); all
        go through the same grayscale conversion, depth scaling, fit and resize as a file. Raises
        :class:`ImageReadError` for what cannot be decoded or holds no radiograph (blank, colour, a few grey
        levels, near-flat), with the reason; with the scope check on, :class:`~pneumoscan.inference.scope.
        OutOfScopeError` (a subclass) for a DICOM whose header the scope rules refuse. The learned part of
        the gate needs the network: :meth:`predict` and :meth:`assess` apply it.
        """
        image, reason = self.prepare(source, name)
        if reason is not None and self.scope_check:
            raise scope.OutOfScopeError(scope.message(self._label(source, name), reason))
        return image

    def prepare(self, source: ImageInput, name: str | None = None) -> tuple[np.ndarray, str | None]:
        """:meth:`preprocess` that returns why the scope rules refuse the image instead of raising:
        (the model input, the reason or None). With the scope check on, a DICOM header the rules refuse
        still raises :class:`~pneumoscan.inference.scope.OutOfScopeError`, before any decoding."""
        pixels, reason = self._pixels(source, name)
        return (pixels.astype(np.float32) / 255.0)[None], reason

    def _pixels(self, source: ImageInput, name: str | None = None) -> tuple[np.ndarray, str | None]:
        """:meth:`prepare` with the model input as uint8 (S, S)."""
        if isinstance(source, str | os.PathLike | bytes | bytearray | memoryview):
            pixels, reason = decode_input(source, self.image_size, self.meta.fit, name=name,
                                          scope_check=self.scope_check)
            if pixels is None:
                raise scope.OutOfScopeError(scope.message(self._label(source, name), reason or ""))
            return pixels, reason
        label = name or "<image>"
        original = pixels_of(source)
        pixels = read_pixels(original, self.meta.image_size, self.meta.fit, name=label)
        check_radiograph_pixels(np.asarray(original), pixels, label)
        return pixels, None

    @staticmethod
    def _label(source: ImageInput, name: str | None) -> str:
        if name:
            return name
        return os.fsdecode(source) if isinstance(source, str | os.PathLike) else "<upload>"

    def predict_proba(self, images, batch_size: int = 64, subtype: bool = False) -> np.ndarray:
        """Pneumonia probabilities of images given as pixels, one per image, in order; with ``subtype``, an
        (N, 2) array: the pneumonia probability and the subtype head's calibrated probability that a
        pneumonia is viral rather than bacterial (for every image, whatever its label: the rows carry it for
        PNEUMONIA answers only), or :class:`ModelFileError` for a model without the head.

        ``images``: one image ((H, W) or (H, W, C), a PIL image, a path or a file's bytes), a batch ((N, H, W), (N, H, W, C) or (N, C, H, W)) as a
        numpy array or torch tensor, or a list of images of any sizes (arrays, tensors, PIL images, paths,
        bytes). Every image goes through the same preprocessing as a file (:meth:`preprocess`): any
        size is fitted and resized, uint16 is scaled by its range, floats must lie in [0, 1]. The
        model's own input, float32 (N, 1, S, S) in [0, 1] or uint8 (N, S, S), is scored as is. Other
        (3, H, W) and (4, H, W) arrays are refused: channels first, or three or four grey images?
        Raises :class:`ImageReadError` saying what is expected for anything else.
        """
        if isinstance(images, list | tuple):
            batch = self._preprocessed([(f"<image {i}>", x) for i, x in enumerate(images)])
        elif isinstance(images, str | os.PathLike | bytes | bytearray | memoryview) or is_pil(images):
            batch = self._preprocessed([(os.fsdecode(images) if isinstance(images, str | os.PathLike)
                                         else "<image>", images)])
        else:
            array = pixels_of(images)
            batch = self._model_input(array)
            if batch is None:
                batch = self._preprocessed(split_batch(array, "<array>"))
        probabilities, _, viral = self._scored(batch, batch_size, with_gate=subtype)
        if not subtype:
            return probabilities
        if viral is None:
            raise ModelFileError(f"{self.meta.name}: the model has no subtype head (bacterial or viral); train it "
                                 "on data that state the subtype")
        return np.stack([probabilities, viral], axis=1)

    def _scored(self, batch: np.ndarray, batch_size: int, with_gate: bool = True
                ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """(probabilities (N,), the scope gate's output (N, K) or None, the calibrated viral probabilities (N,)
        or None) of a model-input batch, in chunks."""
        scores = getattr(self.backend, "scores", None) if with_gate else None
        logits, gate, viral = [], [], []
        for i in range(0, len(batch), batch_size):
            chunk = np.ascontiguousarray(batch[i : i + batch_size], dtype=np.float32)
            chunk_logits, chunk_gate, chunk_viral = (scores(chunk) if scores is not None
                                                     else (self.backend.logits(chunk), None, None))
            logits.append(chunk_logits)
            if chunk_gate is not None:
                gate.append(chunk_gate)
            if chunk_viral is not None:
                viral.append(chunk_viral)
        z = np.concatenate(logits) if logits else np.zeros(0, np.float32)
        probabilities = _sigmoid(z, self.meta.temperature)
        if with_gate and logits and scope.has_gate(self.meta) and not gate:  # never the gate silently off
            raise ModelFileError(f"{self.meta.name}: its metadata describes a scope gate the model does not compute")
        if with_gate and logits and self.meta.subtype and not viral:  # nor the subtype silently missing
            raise ModelFileError(f"{self.meta.name}: its metadata describes a subtype head the model does not compute")
        return (probabilities, np.concatenate(gate) if gate and scope.has_gate(self.meta) else None,
                _sigmoid(np.concatenate(viral), self.meta.subtype["temperature"]) if viral and self.meta.subtype
                else None)

    def assess(self, batch, sources: Sequence[str | Source], reasons: Sequence[str | None] | None = None,
               batch_size: int = 64) -> list[Prediction]:
        """The result rows of ``sources`` (names, or :class:`~pneumoscan.inference.rows.Source` with their
        identifiers and any error), in order, made by the one row maker
        (:func:`~pneumoscan.inference.rows.result_rows`). ``batch`` holds the decoded images of the sources
        without an error, in order: float32 (N, 1, S, S) in [0, 1], or uint8 (N, S, S) (a list of (S, S)
        uint8 images is stacked). The scope gate applies: an image out of scope (``reasons[i]`` or its
        source's ``reason`` from the rules, or the learned gate) gets no probability and no label but
        ``error`` = ``<name>: out of scope: <reason>``; with the scope check off it is scored and marked
        ``scope check off``."""
        sources = [Source(s, reason=reasons[i] if reasons is not None else None) if isinstance(s, str) else s
                   for i, s in enumerate(sources)]
        batch = np.stack(batch) if isinstance(batch, list) and batch else batch
        if len(batch) == 0:
            return result_rows(self.meta, sources, [], None, self.scope_check)
        model_input = self._model_input(np.asarray(batch))
        if model_input is None:
            raise ImageReadError(f"a batch of shape {np.shape(batch)}; expected the model's input (N, 1, S, S) float32 "
                                 "or (N, S, S) uint8")
        probabilities, outputs, viral = self._scored(model_input, batch_size)
        return result_rows(self.meta, sources, probabilities, outputs, self.scope_check, viral)

    def _model_input(self, array) -> np.ndarray | None:
        """``array`` as the network's input when it already is one (no preprocessing to do), else None."""
        if not isinstance(array, np.ndarray):
            return None
        size = self.image_size
        if array.dtype == np.uint8 and array.ndim == 3 and array.shape[1:] == (size, size):
            model_input = array.astype(np.float32)[:, None]
            model_input /= 255.0  # in place: one pass over the batch, the same float32 values
            return model_input
        if (array.dtype == np.float32 and array.ndim == 4 and array.shape[1:] == (1, size, size)
                and (array.size == 0 or (float(array.min()) >= 0.0 and float(array.max()) <= 1.0))):
            return array
        return None

    def _preprocessed(self, items: list[tuple[str, object]]) -> np.ndarray:
        if not items:
            return np.zeros((0, 1, self.image_size, self.image_size), np.float32)
        return np.stack([self.preprocess(x, name=name) for name, x in items])

    def predict(self, sources: Sources, batch_size: int = 32, workers: int | None = None) -> list[Prediction]:
        """Score images in batches, one row per image in the order given.

        ``sources``: a path (``str`` or ``Path``: a file, a folder searched recursively, or a glob), a
        file's bytes, a PIL image, a numpy array or torch tensor (one image or a batch, as for
        :meth:`predict_proba`), or a list of any of these. A single path is one image, never a list of
        characters. A file that cannot be read, or is not a radiograph, gets a row with ``error`` and
        the rest are scored; an image out of scope gets ``error`` = ``<name>: out of scope: <reason>``
        and no probability or label (with ``scope_check`` off: scored, and ``error`` says so).
        ``workers``: processes decoding the files (default: the usable cores, at most 8; a few dozen
        files are decoded here). Nothing is printed: :meth:`iter_predict` gives the rows as they are
        scored, for a caller that shows progress.
        """
        return list(self.iter_predict(sources, batch_size, workers))

    def iter_predict(self, sources: Sources, batch_size: int = 32, workers: int | None = None
                     ) -> Iterator[Prediction]:
        """:meth:`predict`'s rows, in the order given, each as soon as its batch is scored."""
        from pneumoscan.data._parallel import default_workers

        items = list_inputs(sources)
        files = decode_files((source for _, source in items if isinstance(source, str)), self.image_size,
                             self.meta.fit, workers or default_workers(), scope_check=self.scope_check)
        rows: deque[list[Prediction | None]] = deque()  # one slot per input, filled when it is scored
        pending: list[tuple[list[Prediction | None], Source, np.ndarray | None]] = []
        images = [0]  # decoded images among the pending ones

        def flush() -> None:
            images[0] = 0
            if pending:
                scored = self.assess([x for *_, x in pending if x is not None], [s for _, s, _ in pending],
                                     batch_size=batch_size)
                for (slot, *_), row in zip(pending, scored, strict=True):
                    slot[0] = row
                pending.clear()

        for name, source in items:
            slot: list[Prediction | None] = [None]
            rows.append(slot)
            if isinstance(source, str):  # a file: decoded on the workers, in order
                decoded = next(files)
                pending.append((slot, Source(name, decoded.error, decoded.reason, decoded.ids, *file_stat(source)),
                                decoded.pixels))
            else:
                try:
                    pixels, reason = self._pixels(source, name)
                    pending.append((slot, _source(name, source, reason=reason), pixels))
                except ImageReadError as exc:  # OutOfScopeError included
                    pending.append((slot, _source(name, source, str(exc)), None))
                except Exception as exc:  # noqa: BLE001 - a decoder bug on one image must not stop the others
                    error = f"{name}: unexpected error ({type(exc).__name__}: {exc})"
                    pending.append((slot, _source(name, source, error), None))
            if pending[-1][2] is not None:
                images[0] += 1
                if images[0] >= batch_size:
                    flush()
            while rows and rows[0][0] is not None:
                yield rows.popleft()[0]  # type: ignore[misc]
        flush()
        while rows:
            yield rows.popleft()[0]  # type: ignore[misc]

    def prediction(self, name: str, probability: float) -> Prediction:
        """The row for one image scored elsewhere (no scope gate): its label at the stored threshold, model
        name and version, from the one row maker."""
        return result_rows(self.meta, [Source(name)], [probability])[0]


def _sigmoid(logits: np.ndarray, temperature: float | None) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits / float(temperature or 1.0)))


def _source(name: str, image, error: str | None = None, reason: str | None = None) -> Source:
    """What a result row knows of an image given in memory: a file's bytes carry identifiers and a size."""
    if isinstance(image, bytes | bytearray | memoryview):
        return Source.upload(name, bytes(image), error, reason)
    return Source(name, error, reason)


def _identity(meta) -> tuple:
    return meta.name, int(meta.image_size), meta.run_id, meta.created
