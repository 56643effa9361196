"""What ``predict`` reads and writes: inputs given as files, folders or globs; results as CSV or JSON."""

from __future__ import annotations

import glob
import json
import os
import stat
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from pneumoscan._io import atomic_write_csv, atomic_write_text
from pneumoscan.data.image import IMAGE_SUFFIXES, is_dicom
from pneumoscan.errors import ConfigError
from pneumoscan.provenance import DISCLAIMER

COLUMNS = ("file", "probability", "label", "threshold", "model", "version", "error")


@dataclass(frozen=True)
class Prediction:
    """One image's result; ``error`` is set (and probability and label empty) when the file could not be
    read or is out of scope (``<source>: out of scope: <reason>``, see :mod:`pneumoscan.inference.scope`).
    Scored with the scope check off, an image the gate would refuse has its probability and label, and
    ``error`` says ``<source>: scope check off: ...``. The :class:`~pneumoscan.inference.Classifier` makes
    them; this module lists the inputs and writes the rows."""

    source: str
    probability: float | None
    label: str | None
    threshold: float
    model: str
    version: str
    error: str | None = None


def expand_inputs(items: Iterable[str | os.PathLike]) -> list[str]:
    """Files, folders and globs -> the list of files to score, in a stable order.

    A file named explicitly is always kept, whatever its type: if it is not an image it is reported on
    its own row rather than silently dropped. A folder is searched recursively for image files
    (by extension, plus extension-less DICOMs, which scanners often write); hidden files are skipped.
    A pattern that matches nothing, or a path that does not exist, is kept so that it is reported too.
    """
    return list(dict.fromkeys(iter_inputs(items)))  # a file given twice is scored once


def iter_inputs(items: Iterable[str | os.PathLike]) -> Iterator[str]:
    """:func:`expand_inputs` one file at a time, without removing repeats: a folder is walked as it is read."""
    for item in items:
        text = os.fsdecode(item)
        path = Path(text).expanduser()
        if path.is_dir():
            yield from _images_under(path)
        elif path.exists():
            yield str(path)
        elif glob.has_magic(text):
            matches = sorted(glob.glob(os.path.expanduser(text), recursive=True))
            if not matches:
                yield text
            for match in matches:
                yield from (_images_under(Path(match)) if Path(match).is_dir() else [match])
        else:
            yield text  # missing: read_image reports "cannot read file (No such file ...)"


def _images_under(folder: Path) -> Iterator[str]:
    """The image files under ``folder``, in a stable order, one at a time (a huge tree is never listed whole)."""
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if name.startswith("."):
                continue
            path = Path(root) / name
            suffix = path.suffix.lower()
            if suffix in IMAGE_SUFFIXES or (not suffix and _looks_like_dicom(path)):
                yield str(path)


def _looks_like_dicom(path: Path) -> bool:
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return False  # opening a FIFO would wait for a writer; a device never ends
        with open(path, "rb") as fh:
            return is_dicom(fh.read(132))
    except OSError:
        return False


def write_predictions(rows: Sequence[Prediction], out: str | os.PathLike) -> Path:
    """Write ``rows`` to ``out`` (``.csv`` or ``.json``, chosen by the extension) atomically."""
    out = Path(out)
    records = [_record(row) for row in rows]
    if out.suffix.lower() == ".json":
        return atomic_write_text(out, json.dumps({"disclaimer": DISCLAIMER, "predictions": records}, indent=2) + "\n")
    if out.suffix.lower() == ".csv":
        return atomic_write_csv(out, COLUMNS, records)
    raise ConfigError(f"{out}: unknown output format; use a name ending in .csv or .json")


def format_table(rows: Sequence[Prediction], max_name: int = 48) -> str:
    """A plain-text table for the terminal: one line per file, errors in place of a probability (beside it
    for an image scored with the scope check off)."""
    lines = [f"{'file':<{max_name}}  {'probability':>11}  {'label':<9}  note"]
    for row in rows:
        name = row.source if len(row.source) <= max_name else "..." + row.source[-(max_name - 3):]
        if row.error and row.probability is not None:
            lines.append(f"{name:<{max_name}}  {row.probability:>11.4f}  {row.label:<9}  {_short_error(row)}")
        elif row.error:
            lines.append(f"{name:<{max_name}}  {'-':>11}  {'-':<9}  {_short_error(row)}")
        else:
            lines.append(f"{name:<{max_name}}  {row.probability:>11.4f}  {row.label:<9}")
    return "\n".join(lines)


def _short_error(row: Prediction) -> str:
    # The error message starts with the file name, which the table already shows.
    error = row.error or ""
    return error[len(row.source) + 2:] if error.startswith(row.source + ": ") else error


def _record(row: Prediction) -> dict:
    data = asdict(row)
    data["file"] = data.pop("source")
    return {column: data.get(column) for column in COLUMNS}
