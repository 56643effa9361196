"""Score one DICOM instance and keep its result: the SR (and overlay) on disk and a row of the worklist.

The DICOM node and the DICOMweb pull share this: an instance is screened (:func:`instances.refusal`, whose
rules are the scope gate's, :mod:`pneumoscan.inference.scope`; its learned part runs with the network),
decoded by the same :func:`~pneumoscan.data.read_image` as ``predict`` and scored by the same
:class:`~pneumoscan.inference.Classifier`, so its probability is the one ``predict`` gives for the file.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydicom.dataset import Dataset

from pneumoscan._io import atomic_write_bytes, ensure_writable_dir
from pneumoscan.dicom import instances, result_objects
from pneumoscan.dicom.worklist import WORKLIST_COLUMNS, Worklist
from pneumoscan.errors import ImageReadError, OutputError, reason

if TYPE_CHECKING:
    from pneumoscan.inference import Classifier, Prediction

log = logging.getLogger("pneumoscan.dicom")


@dataclass
class Outcome:
    """What became of one instance: scored (probability, label, derived objects) or refused (reason)."""

    ids: instances.Identifiers
    origin: str
    received: str
    probability: float | None = None
    label: str | None = None
    threshold: float | None = None
    flags: list[str] = field(default_factory=list)  # the model's operating points this probability reaches
    reason: str | None = None
    sr_file: str = ""
    overlay_file: str = ""
    model: str = ""
    version: str = ""
    derived: list[Dataset] = field(default_factory=list, repr=False)  # SR and overlay, to send back

    @property
    def scored(self) -> bool:
        return self.reason is None

    def row(self) -> dict:
        # Not asdict(self): it would deep-copy the derived datasets, the dearest step of a result.
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("ids", "derived")}
        data.update(asdict(self.ids))
        data["status"] = "scored" if self.scored else "refused"
        data["flags"] = " ".join(self.flags)
        return {column: data.get(column) for column in WORKLIST_COLUMNS}


class Processor:
    """A loaded model and an output folder: ``process(ds)`` scores one instance and records the result.

    Safe to call from several threads (one per association): inference runs one at a time, since the
    backend uses every core for one image already.
    """

    def __init__(self, model: str | os.PathLike | Classifier, out: str | os.PathLike, *, overlay: bool = False,
                 device: str | None = None) -> None:
        from pneumoscan.inference import Classifier, load

        # The same object pneumoscan.load returns; a path is loaded as the server loads it (ONNX preferred).
        self.classifier = model if isinstance(model, Classifier) else load(model, device=device, prefer_onnx=True)
        self.meta = self.classifier.meta
        self.out = ensure_writable_dir(out)
        self.overlay = overlay
        self._heatmaps = None
        if overlay:  # set up now: a model without PyTorch weights is an error at start, not per instance
            from pneumoscan.explain import Heatmaps

            self._heatmaps = Heatmaps.of(self.classifier)
        self._model_lock = threading.Lock()
        self.worklist = Worklist(self.out)

    def process(self, ds: Dataset, data: bytes | None = None, origin: str = "") -> Outcome:
        """Screen, score and record ``ds``; ``data`` is its encoded file when the caller has it already.

        A refused instance (not a frontal chest radiograph, undecodable pixels) gets an Outcome with the
        reason and no derived objects. Output errors (:class:`~pneumoscan.errors.OutputError`) propagate:
        the caller must not acknowledge an instance whose result could not be kept.
        """
        outcome = Outcome(instances.Identifiers.of(ds), origin, time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                          model=self.meta.name, version=self.meta.version or "")
        name = instances.describe(ds)
        outcome.reason = instances.refusal(ds)
        pixels = None
        if outcome.reason is None:
            try:
                pixels, prediction = self._score(data if data is not None else instances.encode(ds), name)
            except ImageReadError as exc:
                outcome.reason = str(exc).removeprefix(f"{name}: ")
        if outcome.reason is not None:
            log.warning("refused %s (from %s): %s", name, instances.printable(origin or "?"),
                        instances.printable(outcome.reason))
            self.worklist.add(outcome)
            return outcome
        probability = prediction.probability
        outcome.probability, outcome.label, outcome.threshold = probability, prediction.label, prediction.threshold
        outcome.flags = sorted(k for k, v in (self.meta.operating_points or {}).items() if probability >= float(v))
        try:
            sr = result_objects.structured_report(ds, prediction, self.meta)
            image = (result_objects.overlay_image(ds, self._overlay(ds, pixels), prediction, self.meta)
                     if self._heatmaps is not None else None)
        except (ValueError, TypeError, AttributeError, KeyError) as exc:
            # highdicom checks every attribute it copies: a header it refuses gets a reason, not a crash.
            outcome.probability = outcome.label = outcome.threshold = None
            outcome.flags = []
            outcome.reason = f"cannot make the result objects from this header ({reason(exc)})"
            log.warning("refused %s (from %s): %s", name, instances.printable(origin or "?"),
                        instances.printable(outcome.reason))
            self.worklist.add(outcome)
            return outcome
        stem = instances.file_stem(outcome.ids.sop_instance_uid)
        outcome.sr_file = str(atomic_write_bytes(self._inside("sr", f"{stem}.dcm"), result_objects.encode(sr)))
        outcome.derived.append(sr)
        if image is not None:
            outcome.overlay_file = str(atomic_write_bytes(self._inside("overlay", f"{stem}.dcm"),
                                                          result_objects.encode(image)))
            outcome.derived.append(image)
        log.info("scored %s (from %s): p(pneumonia) %.4f, %s", name, instances.printable(origin or "?"), probability,
                 prediction.label)
        self.worklist.add(outcome)
        return outcome

    def _inside(self, folder: str, name: str) -> Path:
        """``out/folder/name``, checked to resolve inside ``out`` (a linked folder pointing elsewhere, or a
        name that is not a plain file name, is an :class:`OutputError`, never a write elsewhere)."""
        path = self.out / folder / name
        root = self.out.resolve()
        if Path(name).name != name or not path.resolve().is_relative_to(root):
            raise OutputError(f"{path}: refused: the result would be written outside {root}; "
                              f"remove links under {self.out} or choose another --out")
        return path

    def _score(self, data: bytes, name: str) -> tuple[np.ndarray, Prediction]:
        """The model input and its result row (the row maker's, as ``predict``'s); ImageReadError for pixels
        that cannot be read or are out of scope (the gate of :mod:`pneumoscan.inference.scope`)."""
        from pneumoscan.inference.scope import OutOfScopeError

        image = self.classifier.preprocess(data, name=name)
        with self._model_lock:
            row = self.classifier.assess(image[None], [name])[0]
        if row.probability is None:
            raise OutOfScopeError(row.error or name)
        return image, row

    def _overlay(self, ds: Dataset, image: np.ndarray) -> np.ndarray:
        """The heatmap over the model input, drawn at the instance's own aspect (Columns x Rows)."""
        from pneumoscan.explain import explanation_picture

        with self._model_lock:  # one image through the network at a time, as for scoring
            heat = self._heatmaps(image[None])[0]
        gray = np.clip(image[0] * 255.0 + 0.5, 0, 255).astype(np.uint8)
        source = (int(ds.get("Columns") or gray.shape[1]), int(ds.get("Rows") or gray.shape[0]), self.meta.fit)
        return explanation_picture(gray, heat, source=source, longest=result_objects.OVERLAY_SIZE)

