"""CSV manifests: ``path,label[,patient_id][,split][,subtype]``, read by :func:`load_manifest`, written by
:func:`write_manifest` (what ``pneumoscan data split`` produces and training records in ``split.csv``).

Paths are relative to the manifest's folder (absolute paths are kept as they are). Labels are ``0``/``1``
or the class names (any case); splits are ``train``/``val``/``test`` (``validation``, ``valid``, ...
accepted); a missing patient id is taken from the file name (:func:`kermany_patient_id`). The optional
``subtype`` column says ``bacterial`` or ``viral`` (``bacteria``/``virus`` accepted) for a PNEUMONIA row; an
empty cell, or no column, leaves the subtype unknown: it is never guessed from the file name here.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable
from pathlib import Path

from pneumoscan._io import atomic_write_csv, csv_text
from pneumoscan.data.records import (
    CLASS_NAMES,
    SUBTYPE_ALIASES,
    SUBTYPES,
    DataIndex,
    Sample,
    kermany_patient_id,
    split_name,
)
from pneumoscan.errors import DatasetError

MANIFEST_COLUMNS = ("path", "label", "patient_id", "split", "subtype")
_LABELS = {"0": 0, "1": 1, **{name.lower(): i for i, name in enumerate(CLASS_NAMES)}}


def is_rsna_labels(path: str | os.PathLike) -> bool:
    """True when the CSV's header is the RSNA challenge's (``patientId`` and ``Target`` columns)."""
    header = _header(Path(path))
    return "patientId" in header and "Target" in header


def load_manifest(path: str | os.PathLike, *, keep_missing: bool = False):
    """Read a manifest into a :class:`~pneumoscan.data.records.DataIndex`.

    Rows whose file does not exist are skipped, counted in a note and listed in ``missing``
    (``keep_missing`` keeps them, for checks that need only the names, such as which patients a run
    trained on); a missing column, an unknown
    label or an unknown split is a :class:`DatasetError` naming the file, the line and the fix.
    """
    path = Path(path)
    rows = _rows(path)
    base = path.parent
    samples: list[Sample] = []
    missing: list[str] = []
    for line, row in rows:
        if not row["path"].strip():
            raise DatasetError(f"{path}:{line}: empty path; every row needs the image file's path")
        file = Path(row["path"].strip())
        file = file if file.is_absolute() else base / file
        label = _label(row.get("label"), path, line)
        split = _split(row.get("split"), path, line)
        patient = (row.get("patient_id") or "").strip() or kermany_patient_id(file.stem)
        if not keep_missing and not file.is_file():
            missing.append(str(file))
            continue
        samples.append(Sample(file, label, patient, split, _subtype(row.get("subtype"), label, path, line)))
    notes = []
    if missing:
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        notes.append(f"skipped {len(missing)} rows whose file does not exist ({shown})")
    if not samples:
        raise DatasetError(f"{path}: no usable rows (no existing image files listed); check the paths")
    return DataIndex(path, "manifest", samples, notes, [Path(m) for m in missing])


def write_manifest(samples: Iterable[Sample], path: str | os.PathLike, relative_to: Path | None = None) -> Path:
    """Write ``samples`` as a manifest (atomically) that :func:`load_manifest` reads back unchanged.

    Paths are written relative to the manifest's folder when they are below it (``relative_to`` chooses
    another base), else absolute, so a manifest beside its data can be moved with it.
    """
    path = Path(path)
    base = Path(os.path.abspath(relative_to or path.parent))

    def row(sample: Sample) -> list[str]:
        file = Path(os.path.abspath(sample.path))
        try:
            shown = file.relative_to(base).as_posix()
        except ValueError:
            shown = str(file)
        label = "" if sample.label is None else CLASS_NAMES[sample.label]
        return [shown, label, sample.patient_id, sample.split or "", sample.subtype or ""]

    return atomic_write_csv(path, MANIFEST_COLUMNS, map(row, samples))


def _header(path: Path) -> list[str]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            return [c.strip() for c in next(csv.reader(fh), [])]
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read CSV ({exc}); check the file") from None


def _rows(path: Path) -> list[tuple[int, dict[str, str]]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            fields = [f.strip() for f in reader.fieldnames or []]
            missing = [c for c in ("path", "label") if c not in fields]
            if missing:
                raise DatasetError(
                    f"{path}: missing column(s) {', '.join(missing)}; a manifest's header must be "
                    f"path,label[,patient_id][,split] (found: {','.join(fields) or 'nothing'})"
                )
            reader.fieldnames = fields
            return [(i + 2, {k: csv_text(v or "") for k, v in row.items() if k is not None})
                    for i, row in enumerate(reader)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{path}: cannot read CSV ({exc}); check the file") from None


def _label(value: str | None, path: Path, line: int) -> int:
    key = (value or "").strip().lower()
    if key not in _LABELS:
        raise DatasetError(
            f"{path}:{line}: unknown label {value!r}; use 0/1 or {'/'.join(CLASS_NAMES)}"
        )
    return _LABELS[key]


def _subtype(value: str | None, label: int, path: Path, line: int) -> str | None:
    key = (value or "").strip().lower()
    if not key:
        return None
    if key not in SUBTYPE_ALIASES:
        raise DatasetError(f"{path}:{line}: unknown subtype {value!r}; use {' or '.join(SUBTYPES)} or leave it empty")
    if label != 1:
        raise DatasetError(f"{path}:{line}: subtype {value!r} on a {CLASS_NAMES[label]} row; only {CLASS_NAMES[1]} "
                           "rows have a subtype")
    return SUBTYPE_ALIASES[key]


def _split(value: str | None, path: Path, line: int) -> str | None:
    if not (value or "").strip():
        return None
    if (split := split_name(value)) is None:
        raise DatasetError(f"{path}:{line}: unknown split {value!r}; use train, val, test or leave it empty")
    return split
