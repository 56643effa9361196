"""``worklist.csv`` and ``worklist.json``: every instance the node or a pull received, with its result.

While instances arrive, the rows of each batch are appended to ``worklist.csv`` with one ``write`` (and
an fsync): what a row costs does not grow with the list, and a crash loses at most the rows being written
(a torn last line is cut off when the folder is opened again). A row equal to the one kept for its
instance is not written again (an instance scored twice across a restart). When the session ends (:meth:`Worklist.finish`:
the node stopping, a pull ending) both files are rewritten atomically in worklist order: the scored rows
by decreasing probability (the most suspicious first), then the refused ones with their reason; an
instance received more than once keeps its last row.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from pneumoscan._io import _output_error, atomic_write_csv, atomic_write_text, csv_lines, csv_text
from pneumoscan.dicom.instances import printable
from pneumoscan.errors import OutputError, reason
from pneumoscan.provenance import DISCLAIMER

log = logging.getLogger("pneumoscan.dicom")

WORKLIST_COLUMNS = (
    "probability", "label", "threshold", "flags", "patient_id", "accession_number", "study_instance_uid",
    "series_instance_uid", "sop_instance_uid", "status", "reason", "received", "origin", "sr_file",
    "overlay_file", "model", "version",
)
_NUMBERS = ("probability", "threshold")


class Outcome(Protocol):
    """What :meth:`Worklist.add` needs of :class:`pneumoscan.dicom.processing.Outcome`."""

    def row(self) -> dict: ...


class Worklist:
    """The worklist of the output folder ``out``; rows already in its ``worklist.csv`` are kept."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.csv = out / "worklist.csv"
        self._lock = threading.Lock()
        self._rows: dict[str, dict] = {}
        self._fd: int | None = None
        if self.csv.is_file():
            self._load()
        self._open()

    def add(self, outcome: Outcome) -> None:
        """Append ``outcome``'s row (its text made printable: a NUL or a newline from a sender's header is
        escaped, so that one instance is one line)."""
        self.add_many([outcome])

    def add_many(self, outcomes: Sequence[Outcome]) -> None:
        """Append the rows of ``outcomes`` with one write and one fsync. A row equal to the one the worklist
        already holds for its instance (the same instance scored again after a restart) is not written twice."""
        lines = []
        with self._lock:
            for outcome in outcomes:
                row = {key: printable(value) if isinstance(value, str) else value
                       for key, value in outcome.row().items()}
                key = self._key(row)
                if key in self._rows and _same(self._rows[key], row):
                    continue
                self._rows[key] = row
                lines.append([row.get(column) for column in WORKLIST_COLUMNS])
            if lines:
                self._append(csv_lines(lines).encode("utf-8", "backslashreplace"))

    def finish(self) -> None:
        """Rewrite ``worklist.csv`` and ``worklist.json`` in worklist order (atomically); rows added after
        this are appended to the new file."""
        with self._lock:
            rows = self.rows()
            self._close()
            atomic_write_csv(self.csv, WORKLIST_COLUMNS, rows)
            atomic_write_text(self.out / "worklist.json",
                              json.dumps({"disclaimer": DISCLAIMER, "results": rows}, indent=1) + "\n")
            self._open()

    def rows(self) -> list[dict]:
        """The rows in worklist order."""
        scored = [r for r in self._rows.values() if r.get("probability") is not None]
        refused = [r for r in self._rows.values() if r.get("probability") is None]
        return sorted(scored, key=lambda r: -float(r["probability"])) + refused

    def _key(self, row: dict) -> str:
        return row.get("sop_instance_uid") or f"#{len(self._rows)}"

    def _load(self) -> None:
        """Read the rows of an earlier session; a torn last line or an older header is repaired by
        rewriting the file, atomically."""
        try:
            data = self.csv.read_bytes()
            torn = bool(data) and not data.endswith(b"\n")
            text = data[: data.rfind(b"\n") + 1].decode("utf-8", "backslashreplace")
            reader = csv.DictReader(text.splitlines())
            for record in reader:
                row = {column: csv_text(record.get(column) or "") for column in WORKLIST_COLUMNS}
                for column in _NUMBERS:
                    row[column] = float(row[column]) if row[column] else None
                self._rows[self._key(row)] = row
        except (OSError, ValueError, csv.Error) as exc:
            log.warning("%s: unreadable (%s); starting a new worklist", self.csv, reason(exc))
            self._rows.clear()
            torn, reader = True, None
        if torn or reader is None or tuple(reader.fieldnames or ()) != WORKLIST_COLUMNS:
            if torn:
                log.warning("%s: its last line was cut off (a crash while it was written); dropped", self.csv)
            atomic_write_csv(self.csv, WORKLIST_COLUMNS, self.rows())

    def _open(self) -> None:
        try:
            # Append mode: every write lands at the end. No follow: a link put in --out is refused, never
            # written through.
            self._fd = os.open(self.csv, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
                               | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError as exc:
            raise OutputError(f"{self.csv}: cannot open for appending ({reason(exc)}); "
                              "remove it if it is a link, or choose another --out") from None
        if os.fstat(self._fd).st_size == 0:
            self._append(csv_lines([WORKLIST_COLUMNS]).encode())

    def _append(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:  # a row is one write (O_APPEND: never interleaved); the loop only for a short one
                view = view[os.write(self._fd, view):]
            os.fsync(self._fd)
        except OSError as exc:
            raise _output_error(self.csv, exc) from None

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        self._close()


def _same(kept: dict, row: dict) -> bool:
    """Whether two rows say the same (a row read back from the CSV has "" where a new one has None)."""
    return all(("" if kept.get(c) is None else kept.get(c)) == ("" if row.get(c) is None else row.get(c))
               for c in WORKLIST_COLUMNS)
