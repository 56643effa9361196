"""Prediction results on disk: the one schema (:mod:`~pneumoscan.inference.rows`) in every format, appended
batch by batch, read back to resume, and a worklist.

Every format holds the same columns, in the same order: :data:`~pneumoscan.inference.rows.COLUMNS`.
:func:`write_predictions` writes rows at once (``.json`` too, the one format that is not streamed).

A results file grows while a run scores: every batch is written with one write and fsynced, so a run
killed at any moment leaves every earlier batch on disk. ``.csv`` and ``.jsonl`` are appended in place
(a torn last line, the only trace a kill can leave, is cut off when the run is resumed); ``.parquet``
is a folder of part files, each written atomically (the layout Ray Data writes too, and which
``pyarrow.parquet.read_table(folder)`` or ``pandas.read_parquet(folder)`` read as one table).

A row is keyed by its file's path, size and modification time, and a DICOM also by its
SOPInstanceUID: :meth:`ResultsWriter.done` is what a resumed run skips.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from pneumoscan._io import _output_error, atomic_write, atomic_write_text, csv_lines, csv_text
from pneumoscan.errors import ConfigError
from pneumoscan.inference.rows import COLUMNS, ID_COLUMNS, Prediction, column_kinds, records
from pneumoscan.provenance import DISCLAIMER

FORMATS = (".csv", ".jsonl", ".parquet")
_KINDS = column_kinds()
_FLOATS = tuple(name for name, kind in _KINDS.items() if kind is float)
_INTS = tuple(name for name, kind in _KINDS.items() if kind is int)


def results_schema():
    """The Arrow schema of a results table (the Parquet files of both engines), from the columns' types."""
    import pyarrow as pa

    arrow = {float: pa.float64(), int: pa.int64(), str: pa.string()}
    return pa.schema([(name, arrow[kind]) for name, kind in _KINDS.items()])


def output_format(out: str | os.PathLike) -> str:
    """``.csv``, ``.jsonl`` or ``.parquet``; anything else is a :class:`ConfigError`."""
    suffix = Path(out).suffix.lower()
    if suffix not in FORMATS:
        raise ConfigError(f"{out}: cannot stream results to this format; use a name ending in "
                          f"{', '.join(FORMATS)}")
    if suffix == ".parquet":
        require_pyarrow(out)
    return suffix


def require_pyarrow(what: str | os.PathLike) -> None:
    try:
        import pyarrow  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise ConfigError(f"{what}: Parquet needs pyarrow, a dependency of pneumoscan: reinstall it (pip install -e .) or pip install pyarrow") from None


def row_key(file: str, size: Any, mtime_ns: Any) -> int:
    """The resume key of one input: its path, size and modification time (64-bit hash: a set stays small)."""
    text = f"{utf8(file)}\0{'' if size in (None, '') else int(size)}\0{'' if mtime_ns in (None, '') else int(mtime_ns)}"
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def utf8(text: str) -> str:
    """A file name as text every format can store: a non-UTF-8 byte becomes ``\\xe9``."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


class ResultsWriter:
    """Appends result rows to ``out``; with ``resume``, keeps what is there and knows what is done."""

    def __init__(self, out: str | os.PathLike, resume: bool = False) -> None:
        self.out = Path(out)
        self.format = output_format(self.out)
        keys: list[int] = []
        self.sop_uids: set[str] = set()
        self.existing = 0
        if self.format == ".parquet":
            self._open_parquet(resume, keys)
        else:
            self._open_lines(resume, keys)
        # The rows already in the output, as a sorted array of 8-byte keys: 8 MB for a million rows.
        self.keys = np.unique(np.array(keys, dtype=np.uint64))

    def done(self, key: int | None, sop_instance_uid: str | None = None) -> bool:
        """Whether this input already has its row: by :func:`row_key`, or by SOPInstanceUID for a DICOM."""
        if sop_instance_uid is not None and sop_instance_uid in self.sop_uids:
            return True
        if key is None or not len(self.keys):
            return False
        i = int(np.searchsorted(self.keys, np.uint64(key)))
        return i < len(self.keys) and int(self.keys[i]) == key

    def append(self, rows: list[Prediction] | list[dict[str, Any]]) -> None:
        """Write ``rows`` (result rows, or their records) as one durable batch (fsynced before this returns)."""
        if not rows:
            return
        rows = [row.record() if isinstance(row, Prediction) else row for row in rows]
        if self.format == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.Table.from_pylist([{**row, "file": utf8(row["file"])} for row in rows], schema=results_schema())
            part = self.out / f"part-{self._next_part:06d}.parquet"
            self._next_part += 1
            try:
                atomic_write(part, lambda tmp: pq.write_table(table, tmp))
            except OSError as exc:
                raise _output_error(part, exc) from None
            return
        self._write(self._encode(rows))

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:  # unbuffered: nothing is left for close() to fail on
                view = view[os.write(self._fd, view):]
            os.fsync(self._fd)
        except OSError as exc:
            raise _output_error(self.out, exc) from None

    def close(self) -> None:
        if self.format != ".parquet" and self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __enter__(self) -> ResultsWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- lines: .csv and .jsonl, appended in place ---

    def _open_lines(self, resume: bool, keys: list[int]) -> None:
        self._fd: int | None = None
        if self.out.is_symlink() and resume:
            raise ConfigError(f"{self.out}: a symbolic link; results are appended only to a regular file, never "
                              "through a link: give the file's own path")
        if self.out.exists() and not self.out.is_symlink() and not self.out.is_file():
            raise ConfigError(f"{self.out}: not a regular file; choose another --out")
        if resume and self.out.is_file():
            if self.format == ".csv":
                next(read_results(self.out), None)  # refuses a CSV that is not ours before anything is cut
            _cut_torn_tail(self.out)
        present = self.out.is_file() and self.out.stat().st_size > 0
        if resume and present:
            for row in read_results(self.out):
                self._remember(row, keys)
                self.existing += 1
        if not (resume and present):
            # A new file (with its header) replaces whatever was there, a symbolic link included, as every
            # write of the project does: a link's target is never truncated.
            header = ",".join(COLUMNS).encode() + b"\n" if self.format == ".csv" else b""
            atomic_write(self.out, lambda tmp: tmp.write_bytes(header))
        try:
            # Append mode: every write lands at the end, whatever a killed run left. No follow: the file
            # checked above is the one written.
            self._fd = os.open(self.out, os.O_WRONLY | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0)
                               | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            raise _output_error(self.out, exc) from None

    def _encode(self, rows: list[dict[str, Any]]) -> bytes:
        if self.format == ".jsonl":
            return "".join(json.dumps(row) + "\n" for row in rows).encode()
        return csv_lines([row.get(c) for c in COLUMNS] for row in rows).encode("utf-8", "surrogateescape")

    # --- parquet: a folder of part files ---

    def _open_parquet(self, resume: bool, keys: list[int]) -> None:
        if self.out.is_symlink():  # never write into, or empty, a folder reached through a link
            if resume:
                raise ConfigError(f"{self.out}: a symbolic link; results are added only to a real folder, never "
                                  "through a link: give the folder's own path")
            self.out.unlink()
        parts = results_folder_parts(self.out)
        if self.out.is_dir():
            for leftover in self.out.glob(".part-*.tmp"):  # a part being written when a run was killed
                leftover.unlink()
            if resume:
                for row in read_results(self.out):
                    self._remember(row, keys)
                    self.existing += 1
            else:
                remove_results_parts(parts)
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _output_error(self.out, exc) from None
        self._next_part = 1 + max((int(p.stem[5:]) for p in self.out.glob("part-*.parquet") if p.stem[5:].isdigit()),
                                  default=0)

    def _remember(self, row: dict[str, Any], keys: list[int]) -> None:
        keys.append(row_key(row["file"], row.get("size"), row.get("mtime_ns")))
        if row.get("sop_instance_uid"):
            self.sop_uids.add(row["sop_instance_uid"])


def results_folder_parts(out: str | os.PathLike) -> list[Path]:
    """The Parquet parts of the results folder ``out`` (none when it does not exist yet).

    A folder holding anything but results parts (a Parquet file of another schema, a sub-folder, a link,
    any other file, hidden ones included) was not made by pneumoscan: it is refused with a
    :class:`ConfigError`, so that no engine ever replaces or empties it."""
    out = Path(out)
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise ConfigError(f"{out}: {'a link' if out.is_symlink() else 'a file'}, not a results folder; "
                          "choose another --out")
    if not out.exists():
        return []
    import pyarrow.parquet as pq

    parts, foreign = [], []
    names = tuple(COLUMNS)
    for entry in sorted(out.iterdir()):
        if entry.name.startswith(".part-") and entry.name.endswith(".tmp") and entry.is_file():
            continue  # a part being written when a run was killed
        try:
            ours = (entry.suffix == ".parquet" and entry.is_file() and not entry.is_symlink()
                    and tuple(pq.read_schema(entry).names) == names)
        except Exception:  # noqa: BLE001 - pyarrow's own error types: not a results part either way
            ours = False
        (parts if ours else foreign).append(entry)
    if foreign:
        listed = ", ".join(p.name for p in foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise ConfigError(f"{out}: a folder that pneumoscan's results did not make (it holds {listed}); "
                          "nothing was changed: choose another --out")
    return parts


def remove_results_parts(parts: Iterable[Path]) -> None:
    """Delete results parts listed by :func:`results_folder_parts`, and nothing else."""
    for part in parts:
        part.unlink(missing_ok=True)


def _cut_torn_tail(path: Path) -> None:
    """Drop a last line without its newline: the remains of a write cut short by a kill."""
    with open(path, "rb+") as fh:
        size = fh.seek(0, os.SEEK_END)
        tail = 1 << 16
        while True:
            start = max(0, size - tail)
            fh.seek(start)
            chunk = fh.read(size - start)
            end = chunk.rfind(b"\n")
            if end >= 0 or start == 0:
                keep = start + end + 1  # 0 when there is no complete line at all
                if keep != size:
                    fh.truncate(keep)
                    os.fsync(fh.fileno())
                return
            tail *= 4


def read_results(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """The rows of a results file or folder, one at a time, with typed values (``None`` when empty)."""
    path = Path(path)
    fmt = output_format(path)
    if fmt == ".parquet":
        import pyarrow.parquet as pq

        files = [path] if path.is_file() else sorted(p for p in path.rglob("*.parquet") if not p.name.startswith((".", "_")))
        for file in files:
            for batch in pq.ParquetFile(file).iter_batches():
                yield from batch.to_pylist()
        return
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as fh:
        if fmt == ".jsonl":
            for number, line in enumerate(fh, 1):
                if line.strip():
                    yield _checked(json.loads(line), path, number)
            return
        reader = csv.DictReader(fh)
        if reader.fieldnames is not None and tuple(reader.fieldnames) != COLUMNS:
            raise ConfigError(f"{path}: not a results file of this pneumoscan (columns {', '.join(reader.fieldnames)}); "
                              "choose another --out or remove it")
        for row in reader:
            yield _typed(row)


def _checked(row: Any, path: Path, number: int) -> dict[str, Any]:
    if not isinstance(row, dict) or "file" not in row:
        raise ConfigError(f"{path}: line {number} is not a results row; choose another --out or remove it")
    return row


def _typed(row: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {k: (csv_text(v) if v != "" else None) for k, v in row.items()}
    for name in _FLOATS:
        out[name] = float(out[name]) if out[name] is not None else None
    for name in _INTS:
        out[name] = int(out[name]) if out[name] is not None else None
    return out


def write_worklist(results: str | os.PathLike, out: str | os.PathLike, operating_points: dict[str, float]) -> Path:
    """Write the rows of ``results`` as a review worklist (for research, not clinical triage): most probable pneumonia first.

    One CSV row per input: its rank, probability and label, one yes/no flag per operating point stored
    with the model (``at_youden``: probability at or above that threshold), the DICOM identifiers and
    the file; files that could not be scored come last with their reason. The first line is a comment
    (``#``) with the disclaimer.
    """
    rows = list(read_results(results))
    rows.sort(key=lambda r: (r["probability"] is None, -(r["probability"] or 0.0), r["file"]))
    flags = [f"at_{name}" for name in operating_points]
    columns = ["rank", "probability", "label", *flags, *ID_COLUMNS, "file", "error"]
    table = [columns]
    for rank, row in enumerate(rows, 1):
        p = row["probability"]
        marks = {f"at_{name}": ("" if p is None else "yes" if p >= t else "no") for name, t in operating_points.items()}
        cells = {**row, **marks, "rank": rank if p is not None else ""}
        table.append([cells.get(c) for c in columns])
    return atomic_write_text(out, f"# {DISCLAIMER}\n" + csv_lines(table))


def write_predictions(rows: Iterable[Prediction], out: str | os.PathLike) -> Path:
    """Write ``rows`` to ``out`` at once, in the format its name ends with: ``.json`` (the disclaimer and
    the rows, written atomically), or ``.csv``, ``.jsonl`` or ``.parquet`` (as :class:`ResultsWriter`
    writes them while a run scores). Every format holds the same :data:`COLUMNS`."""
    out = Path(out)
    if out.suffix.lower() == ".json":
        payload = {"disclaimer": DISCLAIMER, "predictions": records(rows)}
        return atomic_write_text(out, json.dumps(payload, indent=2) + "\n")
    if out.suffix.lower() not in FORMATS:
        raise ConfigError(f"{out}: unknown output format; use a name ending in .json, {', '.join(FORMATS)}")
    with ResultsWriter(out) as writer:
        writer.append(list(rows))
    return out


def format_table(rows: Iterable[Prediction], max_name: int = 48) -> str:
    """A plain-text table for the terminal: one line per file, errors in place of a probability (beside it
    for an image scored with the scope check off); a subtype column where a row has one (PNEUMONIA answers of
    a model with a subtype head)."""
    rows = list(rows)
    width = max((len(subtype_text(row)) for row in rows), default=0)
    extra = f"  {'subtype':<{width}}" if width else ""
    lines = [f"{'file':<{max_name}}  {'probability':>11}  {'label':<9}{extra}  note".rstrip()]
    for row in rows:
        name = row.file if len(row.file) <= max_name else "..." + row.file[-(max_name - 3):]
        subtype = f"  {subtype_text(row):<{width}}" if width else ""
        if row.error and row.probability is not None:
            line = f"{name:<{max_name}}  {row.probability:>11.4f}  {row.label:<9}{subtype}  {_short_error(row)}"
        elif row.error:
            line = f"{name:<{max_name}}  {'-':>11}  {'-':<9}{subtype}  {_short_error(row)}"
        else:
            line = f"{name:<{max_name}}  {row.probability:>11.4f}  {row.label:<9}{subtype}"
        lines.append(line.rstrip())
    return "\n".join(lines)


def subtype_text(row: Prediction) -> str:
    """``bacterial (P viral 0.12)``, ``viral (P viral 0.91)`` or ``uncertain``; empty without a subtype."""
    if row.subtype is None:
        return ""
    if row.subtype == "uncertain" or row.viral_probability is None:
        return row.subtype
    return f"{row.subtype} (P viral {row.viral_probability:.2f})"


def _short_error(row: Prediction) -> str:
    # The error message starts with the file name, which the table already shows.
    error = row.error or ""
    return error[len(row.file) + 2:] if error.startswith(row.file + ": ") else error
