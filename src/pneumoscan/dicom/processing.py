"""Score one DICOM instance and keep its result: the SR (and overlay) on disk and a row of the worklist.

The DICOM node and the DICOMweb pull share this: an instance is screened (:func:`instances.refusal`, whose
rules are the scope gate's, :mod:`pneumoscan.inference.scope`; its learned part runs with the network),
decoded by the same :func:`~pneumoscan.data.read_image` as ``predict`` and scored by the same
:class:`~pneumoscan.inference.Classifier`, so its probability is the one ``predict`` gives for the file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydicom.dataset import Dataset

from pneumoscan._io import ensure_writable_dir, fsync_dir
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


@dataclass
class Received:
    """One instance to score: its data set, its encoded file (None: encoded here), where and when it came from."""

    ds: Dataset
    data: bytes | None = None
    origin: str = ""
    received: str = ""  # the time it was received; now when empty


def write_synced(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically: a temporary beside it (named with this process's id), synced,
    renamed. The rename is durable once the folder is synced (:func:`~pneumoscan._io.fsync_dir`, once for
    many files). Unlike ``atomic_write_bytes`` it does not list the folder for a killed writer's
    temporaries on every write: ``sr/`` holds one file per instance ever scored, and that listing grew
    with it (32 ms a write at 20,000 files); :func:`sweep_temporaries` does it once, at start."""
    try:
        path.parent.mkdir(exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write ({reason(exc)})") from None
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, 0o644)  # mkstemp's is the owner's only; results are read by others
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise OutputError(f"{path}: cannot write ({reason(exc)})") from None
    return path


def sweep_temporaries(folder: Path) -> None:
    """Remove the temporaries of :func:`write_synced` left in ``folder`` by processes no longer running."""
    for tmp in folder.glob(".*.tmp"):
        pid = tmp.name.rsplit(".", 3)[1] if tmp.name.count(".") >= 4 else ""
        if pid.isdigit() and not _running(int(pid)):
            with contextlib.suppress(OSError):
                tmp.unlink()


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process
        return True
    return True


def now() -> str:
    """The time an instance is received, as the worklist writes it."""
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class Processor:
    """A loaded model and an output folder: ``process_many(items)`` scores instances in one batch and
    records the results; ``process(ds)`` is that for one instance.

    Safe to call from several threads: one batch goes through the network at a time.
    ``timings`` adds up the seconds spent per stage (decode, network, sr, overlay, write) over the instances counted
    in ``timings["instances"]``.
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
        result_objects.prepare(self.meta)
        self._model_lock = threading.Lock()
        self.worklist = Worklist(self.out)
        for folder in ("sr", "overlay"):
            sweep_temporaries(self.out / folder)
        self.timings: Counter[str] = Counter()

    def process(self, ds: Dataset, data: bytes | None = None, origin: str = "") -> Outcome:
        """Screen, score and record ``ds``; ``data`` is its encoded file when the caller has it already."""
        return self.process_many([Received(ds, data, origin)])[0]

    def process_many(self, items: Sequence[Received]) -> list[Outcome]:
        """Screen, score and record ``items``, their images through the network in one batch; the outcomes
        in order, once every result (SR, overlay, worklist row) is on disk (written and synced).

        A refused instance (not a frontal chest radiograph, undecodable pixels) gets an Outcome with the
        reason and no derived objects. Output errors (:class:`~pneumoscan.errors.OutputError`) propagate:
        the caller must not take an instance for done whose result could not be kept.
        """
        with self._model_lock:
            outcomes = [Outcome(instances.Identifiers.of(item.ds), item.origin, item.received or now(),
                                model=self.meta.name, version=self.meta.version or "") for item in items]
            scored = self._score(items, outcomes)
            tick = time.perf_counter()
            pictures = self._overlays({i: (items[i].ds, image) for i, (image, _) in scored.items()})
            self.timings["overlay"] += time.perf_counter() - tick
            tick = time.perf_counter()
            results = {i: self._results(items[i].ds, outcomes[i], prediction, pictures.get(i))
                       for i, (_, prediction) in scored.items()}
            self.timings["sr"] += time.perf_counter() - tick
            tick = time.perf_counter()
            self._write(outcomes, results)
            self.timings["write"] += time.perf_counter() - tick
            self.timings["instances"] += len(items)
        for item, outcome in zip(items, outcomes, strict=True):
            name, origin = instances.describe(item.ds), instances.printable(item.origin or "?")
            if outcome.scored:
                log.info("scored %s (from %s): p(pneumonia) %.4f, %s", name, origin, outcome.probability, outcome.label)
            else:
                log.warning("refused %s (from %s): %s", name, origin, instances.printable(outcome.reason or ""))
        return outcomes

    def _score(self, items: Sequence[Received], outcomes: list[Outcome]) -> dict[int, tuple[np.ndarray, Prediction]]:
        """Screen and decode each item, then score the decoded ones in one network call (the row maker's
        rows, as ``predict``'s): {index: (model input, row)} of those scored; the others' outcomes get
        their reason."""
        from pneumoscan.inference.rows import Source

        tick = time.perf_counter()
        sources, images, decoded = [], [], []
        for i, (item, outcome) in enumerate(zip(items, outcomes, strict=True)):
            name = instances.describe(item.ds)
            outcome.reason = instances.refusal(item.ds)
            if outcome.reason is not None:
                continue
            try:
                image, why = self.classifier.prepare(item.data if item.data is not None else instances.encode(item.ds),
                                                     name)
            except ImageReadError as exc:  # OutOfScopeError included: the header rules refuse it
                outcome.reason = str(exc).removeprefix(f"{name}: ")
                continue
            sources.append(Source(name, reason=why))
            images.append(image)
            decoded.append(i)
        self.timings["decode"] += time.perf_counter() - tick
        tick = time.perf_counter()
        rows = self.classifier.assess(images, sources, batch_size=max(1, len(images))) if images else []
        self.timings["network"] += time.perf_counter() - tick
        scored = {}
        for i, image, row in zip(decoded, images, rows, strict=True):
            if row.probability is None:
                outcomes[i].reason = (row.error or "").removeprefix(f"{row.file}: ")
            else:
                scored[i] = (image, row)
        return scored

    def _overlays(self, items: dict[int, tuple[Dataset, np.ndarray]]) -> dict[int, np.ndarray]:
        """The Grad-CAM pictures of the scored items ({} without --overlay), their heatmaps in one call."""
        if self._heatmaps is None or not items:
            return {}
        from pneumoscan.explain import explanation_picture

        heat = self._heatmaps(np.stack([image for _, image in items.values()]))
        pictures = {}
        for (i, (ds, image)), one in zip(items.items(), heat, strict=True):
            gray = np.clip(image[0] * 255.0 + 0.5, 0, 255).astype(np.uint8)
            # drawn at the instance's own aspect (Columns x Rows)
            source = (int(ds.get("Columns") or gray.shape[1]), int(ds.get("Rows") or gray.shape[0]), self.meta.fit)
            pictures[i] = explanation_picture(gray, one, source=source, longest=result_objects.OVERLAY_SIZE)
        return pictures

    def _results(self, ds: Dataset, outcome: Outcome, prediction: Prediction,
                 picture: np.ndarray | None) -> list[tuple[str, Dataset, bytes]] | None:
        """The outcome filled in from its row, and its result objects as (folder, dataset, encoded file);
        None (and the outcome refused with the reason) when highdicom refuses the header."""
        probability = prediction.probability
        try:
            made = [("sr", result_objects.structured_report(ds, prediction, self.meta))]
            if picture is not None:
                made.append(("overlay", result_objects.overlay_image(ds, picture, prediction, self.meta)))
            results = [(folder, obj, result_objects.encode(obj)) for folder, obj in made]
        except (ValueError, TypeError, AttributeError, KeyError) as exc:
            # highdicom checks every attribute it copies: a header it refuses gets a reason, not a crash.
            outcome.reason = f"cannot make the result objects from this header ({reason(exc)})"
            return None
        outcome.probability, outcome.label, outcome.threshold = probability, prediction.label, prediction.threshold
        outcome.flags = sorted(k for k, v in (self.meta.operating_points or {}).items() if probability >= float(v))
        return results

    def _write(self, outcomes: list[Outcome], results: dict[int, list | None]) -> None:
        """Each result file written atomically, their folders synced once, then the worklist rows."""
        folders = set()
        for i, made in results.items():
            stem = instances.file_stem(outcomes[i].ids.sop_instance_uid)
            for folder, obj, data in made or ():
                path = str(write_synced(self._inside(folder, f"{stem}.dcm"), data))
                if folder == "sr":
                    outcomes[i].sr_file = path
                else:
                    outcomes[i].overlay_file = path
                outcomes[i].derived.append(obj)
                folders.add(self.out / folder)
        for folder in folders:  # the renames above survive a power cut once their folder is synced
            fsync_dir(folder)
        self.worklist.add_many(outcomes)

    def _inside(self, folder: str, name: str) -> Path:
        """``out/folder/name``, checked to resolve inside ``out`` (a linked folder pointing elsewhere, or a
        name that is not a plain file name, is an :class:`OutputError`, never a write elsewhere)."""
        path = self.out / folder / name
        root = self.out.resolve()
        if Path(name).name != name or not path.resolve().is_relative_to(root):
            raise OutputError(f"{path}: refused: the result would be written outside {root}; "
                              f"remove links under {self.out} or choose another --out")
        return path
