"""The node's spool: every instance it acknowledges is on disk, in ``<out>/spool/``, until its results are.

A C-STORE is answered once its instance is spooled (written to a temporary, synced, renamed onto
``<SOPInstanceUID>.dcm``, the folder synced): the sender never waits for the model. The :class:`Scorer`
takes what is spooled, from every association, in batches (one network call per batch), writes the
results (SR, overlay, worklist rows, all synced) and removes an instance from the spool only then, and
with a destination only once its results are sent (or given up on). A node stopped or killed leaves the
rest in the spool; the next start on the same ``--out`` scores it first. Results are keyed by the SOP
Instance UID: an instance scored twice (killed between its results and its removal) keeps one SR and one
worklist row.

A spooled file is the instance as received: preamble, file meta, the data set as sent. Its file meta
says where it came from and when, in the Private Information that PS3.10 reserves for that
(:data:`PRIVATE_CREATOR_UID`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from pydicom.filereader import read_file_meta_info
from pydicom.uid import generate_uid

from pneumoscan._io import fsync_dir
from pneumoscan.data.dicom_image import read_dicom_dataset
from pneumoscan.dicom import instances
from pneumoscan.dicom.processing import Processor, Received, sweep_temporaries, write_synced
from pneumoscan.errors import ConfigError, OutputError, reason

if TYPE_CHECKING:
    from pydicom.dataset import FileMetaDataset

log = logging.getLogger("pneumoscan.dicom")

SPOOL_FOLDER = "spool"
PRIVATE_CREATOR_UID = generate_uid(entropy_srcs=["pneumoscan", "spool", "origin and time received"])
SET_ASIDE = ".unreadable"  # a spooled file that can no longer be read is renamed to this, never retried


def spool_file(file_meta: FileMetaDataset, dataset: bytes, origin: str, received: str) -> bytes:
    """The DICOM file that is spooled: ``dataset`` as sent, behind ``file_meta`` recording its origin and
    when it was received."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info

    file_meta.PrivateInformationCreatorUID = PRIVATE_CREATOR_UID
    facts = json.dumps({"origin": origin, "received": received}).encode()
    file_meta.PrivateInformation = facts + b" " * (len(facts) % 2)  # an even length: as written, without a NUL
    buffer = DicomBytesIO()
    buffer.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(buffer, file_meta, enforce_standard=True)
    return buffer.getvalue() + dataset


def provenance(ds) -> tuple[str, str]:
    """(origin, time received) of a spooled data set, as :func:`spool_file` recorded them ("" when absent)."""
    meta = getattr(ds, "file_meta", None)
    try:
        if meta is not None and meta.get("PrivateInformationCreatorUID") == PRIVATE_CREATOR_UID:
            facts = json.loads(bytes(meta.PrivateInformation).rstrip(b"\0"))
            return str(facts.get("origin", "")), str(facts.get("received", ""))
    except (ValueError, TypeError, AttributeError):
        pass
    return "", ""


class Spool:
    """The spool folder of the output folder ``out``, held by this node alone (a lock file) while open."""

    def __init__(self, out: Path) -> None:
        self.folder = out / SPOOL_FOLDER
        try:
            self.folder.mkdir(exist_ok=True)
            if self.folder.is_symlink() or not self.folder.resolve().is_relative_to(out.resolve()):
                raise OutputError(f"{self.folder}: refused: a link; the spool must be a folder inside {out}")
            self._lock = os.open(self.folder / ".lock", os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
                                 | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError as exc:
            raise OutputError(f"{self.folder}: cannot use as the spool ({reason(exc)}); choose another --out") from None
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._lock)
            raise ConfigError(f"--out {out}: another pneumoscan node uses this folder; give each node its own "
                              "--out") from None
        sweep_temporaries(self.folder)  # a killed node's unfinished writes: never acknowledged

    def put(self, uid: object, data: bytes) -> Path:
        """Keep ``data`` as the instance ``uid`` (a later copy replaces an earlier one); it is on disk, and
        will be after a power cut, when this returns. :class:`OutputError` when it cannot be."""
        path = write_synced(self.folder / f"{instances.file_stem(uid)}.dcm", data)
        fsync_dir(self.folder)
        return path

    def pending(self) -> list[Path]:
        """The spooled instances, oldest first."""
        entries = []
        for path in self.folder.glob("*.dcm"):
            with contextlib.suppress(OSError):
                entries.append((path.stat().st_mtime_ns, path))
        return [path for _, path in sorted(entries)]

    def remove(self, path: Path, seen: os.stat_result) -> None:
        """Remove ``path`` when it is still the file that was scored (``seen``): a copy sent again since
        then is kept, and scored in its turn."""
        try:
            now = path.stat()
            if (now.st_ino, now.st_mtime_ns, now.st_size) == (seen.st_ino, seen.st_mtime_ns, seen.st_size):
                path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:  # scored again at the next start, to the same results
            log.warning("%s: scored, but cannot be removed from the spool (%s)", path, reason(exc))

    def close(self) -> None:
        if self._lock is not None:
            os.close(self._lock)  # releases the lock
            self._lock = None


class Scorer:
    """One thread scoring the spooled instances of every association, in batches of up to ``max_batch``
    instances (and ``max_batch_bytes`` of files); ``send(derived, files, done)`` forwards results, and
    calls ``done`` once they are sent or given up on (None: no destination).

    ``timings``: seconds instances waited in the spool, and ``instances``: how many."""

    def __init__(self, processor: Processor, spool: Spool, send: Callable | None = None, max_batch: int = 64,
                 max_batch_bytes: int = 256 * 2**20) -> None:
        self.processor, self.spool, self.send = processor, spool, send
        self.max_batch, self.max_batch_bytes = max_batch, max_batch_bytes
        self.timings: Counter[str] = Counter()
        self._queue: queue.Queue = queue.Queue()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pneumoscan-score", daemon=True)

    def start(self) -> Scorer:
        """Queue what an earlier node left in the spool, then start scoring."""
        left = self.spool.pending()
        if left:
            log.info("%d instance(s) left in %s by an earlier run: scored first", len(left), self.spool.folder)
        for path in left:
            self.put(path)
        self._thread.start()
        return self

    def put(self, path: Path) -> None:
        self._queue.put((path, time.perf_counter()))

    def close(self, timeout: float | None = None) -> None:
        """Score what is queued (waiting up to ``timeout`` s), then stop the thread."""
        self._stopping.set()  # a batch waiting for disk space stays spooled instead
        self._queue.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            batch, last = self._take()
            try:
                if batch:
                    self._score(batch)
            except Exception:  # noqa: BLE001 - the scorer must outlive a bug: what it did not finish stays spooled
                log.exception("unexpected error scoring %d spooled instance(s); they stay in the spool", len(batch))
            if last:
                return

    def _take(self) -> tuple[list[tuple[Path, float]], bool]:
        """The next batch: what is queued now, at least one instance (waiting for it), within the bounds;
        and whether the queue's end was reached."""
        first = self._queue.get()
        if first is None:
            return [], True
        batch, size = {first[0]: first}, 0
        while len(batch) < self.max_batch and size < self.max_batch_bytes:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                return list(batch.values()), True
            batch.setdefault(item[0], item)  # sent twice while queued: scored once
            with contextlib.suppress(OSError):
                size += item[0].stat().st_size
        return list(batch.values()), False

    def _score(self, batch: list[tuple[Path, float]]) -> None:
        items, files = [], []
        for path, queued in batch:
            try:
                seen = path.stat()
                data = path.read_bytes()
                ds = read_dicom_dataset(data, str(path))
                # As received: a deflated data set is read inflated, under another transfer syntax.
                ds.file_meta = read_file_meta_info(path)
            except FileNotFoundError:
                continue  # scored already: a copy queued twice
            except Exception as exc:  # noqa: BLE001 - one damaged file must not keep the others from being scored
                self._set_aside(path, reason(exc))
                continue
            self.timings["spool wait"] += time.perf_counter() - queued
            self.timings["instances"] += 1
            items.append(Received(ds, data, *provenance(ds)))
            files.append((path, seen))
        self._finish(items, files)

    def _finish(self, items: list, files: list[tuple[Path, os.stat_result]]) -> None:
        """Score ``items`` (read from ``files``), then forward their results and empty their spool files."""
        while items:
            try:
                outcomes = self.processor.process_many(items)
                break
            except OutputError as exc:  # a full disk: the instances stay spooled, and are tried again
                log.error("cannot keep the results of %d instance(s) (%s); they stay in %s and are tried again "
                          "in 10 s", len(items), exc, self.spool.folder)
                if self._stopping.wait(10.0):
                    return
            except Exception:  # noqa: BLE001 - a bug on one instance must not stop the scorer for all others
                if len(items) > 1:  # find the instance: each alone
                    for one, file in zip(items, files, strict=True):
                        self._finish([one], [file])
                    return
                log.exception("unexpected error scoring %s", files[0][0])
                self._set_aside(files[0][0], "unexpected error")
                return
        else:
            return
        for (path, seen), outcome in zip(files, outcomes, strict=True):
            if self.send is not None and outcome.derived:
                self.send(outcome.derived, [outcome.sr_file, outcome.overlay_file][: len(outcome.derived)],
                          lambda path=path, seen=seen: self.spool.remove(path, seen))
            else:
                self.spool.remove(path, seen)

    def _set_aside(self, path: Path, why: str) -> None:
        log.error("%s: cannot score the spooled instance (%s); renamed to %s%s and left there", path, why,
                  path.name, SET_ASIDE)
        with contextlib.suppress(OSError):
            path.replace(path.with_name(path.name + SET_ASIDE))
