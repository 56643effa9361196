"""CSV manifests: ``path,label[,patient_id][,split]``, read by :func:`load_manifest`, written by
:func:`write_manifest` (what ``pneumoscan data split`` produces and training records in ``split.csv``).

Paths are relative to the manifest's folder (absolute paths are kept as they are). Labels are ``0``/``1``
or the class names (any case); splits are ``train``/``val``/``test`` (``validation``, ``valid``, ...
accepted); a missing patient id is taken from the file name (:func:`kermany_patient_id`).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable
from pathlib import Path

from pneumoscan._io import atomic_write_text
from pneumoscan.data.records import CLASS_NAMES, Sample
from pneumoscan.errors import DatasetError

MANIFEST_COLUMNS = ("path", "label", "patient_id", "split")
_LABELS = {"0": 0, "1": 1, **{name.lower(): i for i, name in enumerate(CLASS_NAMES)}}
_SPLITS = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
           "test": "test", "testing": "test", "": None}


def is_rsna_labels(path: str | os.PathLike) -> bool:
    """True when the CSV's header is the RSNA challenge's (``patientId`` and ``Target`` columns)."""
    header = _header(Path(path))
    return "patientId" in header and "Target" in header


def load_manifest(path: str | os.PathLike):
    """Read a manifest into a :class:`~pneumoscan.data.sources.DataIndex`.

    Rows whose file does not exist are skipped, counted in a note and listed in ``missing``; a missing column, an unknown
    label or an unknown split is a :class:`DatasetError` naming the file, the line and the fix.
    """
    from pneumoscan.data.sources import DataIndex, kermany_patient_id

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
        if not file.is_file():
            missing.append(str(file))
            continue
        samples.append(Sample(file, label, patient, split))
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
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(MANIFEST_COLUMNS)
    for s in samples:
        file = Path(os.path.abspath(s.path))
        try:
            shown = file.relative_to(base).as_posix()
        except ValueError:
            shown = str(file)
        writer.writerow([shown, "" if s.label is None else CLASS_NAMES[s.label], s.patient_id, s.split or ""])
    return atomic_write_text(path, out.getvalue())


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
            return [(i + 2, {k: (v or "") for k, v in row.items() if k is not None}) for i, row in enumerate(reader)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{path}: cannot read CSV ({exc}); check the file") from None


def _label(value: str | None, path: Path, line: int) -> int:
    key = (value or "").strip().lower()
    if key not in _LABELS:
        raise DatasetError(
            f"{path}:{line}: unknown label {value!r}; use 0/1 or {'/'.join(CLASS_NAMES)}"
        )
    return _LABELS[key]


def _split(value: str | None, path: Path, line: int) -> str | None:
    key = (value or "").strip().lower()
    if key not in _SPLITS:
        raise DatasetError(f"{path}:{line}: unknown split {value!r}; use train, val, test or leave it empty")
    return _SPLITS[key]
