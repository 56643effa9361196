"""One result per image, made in one place: the schema (:class:`Prediction`) and the row maker (:func:`result_rows`).

Every entry point that answers with a result asks :func:`result_rows` (through
:meth:`Classifier.assess <pneumoscan.inference.Classifier.assess>`): the Python API (``predict``,
``iter_predict``), ``pneumoscan predict`` (its table and every ``--out`` format), the Ray scorer, the
server and the DICOM node. The columns of every results file (CSV, JSON, JSONL, Parquet) and of the
server's rows are the fields of :class:`Prediction`, in order. A new field of every result is a field
of :class:`Prediction` and the line of :func:`result_rows` that fills it: nothing else changes.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pneumoscan.inference import scope


@dataclass(frozen=True, kw_only=True)
class Prediction:
    """One image's result, the one schema of every output (its fields are the columns, in order).

    ``subtype`` (``bacterial``, ``viral`` or ``uncertain``, see :meth:`ModelMeta.subtype_label
    <pneumoscan.models.ModelMeta.subtype_label>`) and ``viral_probability`` (the calibrated probability that
    the pneumonia is viral rather than bacterial) are set only for a PNEUMONIA answer of a model with a
    subtype head; empty otherwise (NORMAL, refused, unreadable, or a model without the head).

    ``error`` is set, and probability and label empty, when the image could not be read or is out of
    scope (``<file>: out of scope: <reason>``, see :mod:`pneumoscan.inference.scope`). Scored with the
    scope check off, an image the gate would refuse keeps its probability and label, and ``error`` says
    ``<file>: scope check off: ...``. The DICOM identifiers are those of a DICOM file (else empty);
    ``size`` and ``mtime_ns`` are the file's (what a resumed run compares), empty for pixels.
    """

    file: str
    probability: float | None
    label: str | None
    subtype: str | None = None
    viral_probability: float | None = None
    threshold: float
    model: str
    version: str
    error: str | None = None
    patient_id: str | None = None
    accession_number: str | None = None
    study_instance_uid: str | None = None
    sop_instance_uid: str | None = None
    size: int | None = None
    mtime_ns: int | None = None

    @property
    def source(self) -> str:
        """The image's name (``file``), under the name the Python API has always used."""
        return self.file

    def record(self) -> dict[str, Any]:
        """The row as a dict of the :data:`COLUMNS`, in order (what every file format writes)."""
        return {name: getattr(self, name) for name in COLUMNS}


COLUMNS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Prediction))


def column_kinds() -> dict[str, type]:
    """Each column's value type (``float``, ``int`` or ``str``), read from :class:`Prediction`'s fields."""
    hints = typing.get_type_hints(Prediction)
    return {name: next(t for t in typing.get_args(hints[name]) or (hints[name],) if t is not type(None))
            for name in COLUMNS}


@dataclass(frozen=True)
class Source:
    """What is known of one image before it is scored: its name, why it cannot be scored (``error``: it
    could not be read, or the scope rules refused it before decoding), why the scope rules refuse its
    decoded pixels (``reason``: scored with the check off), and its identifiers."""

    file: str
    error: str | None = None
    reason: str | None = None
    ids: Mapping[str, str | None] = field(default_factory=dict)
    size: int | None = None
    mtime_ns: int | None = None

    @classmethod
    def upload(cls, name: str, data: bytes, error: str | None = None, reason: str | None = None) -> Source:
        """An image given as its file's bytes: its DICOM identifiers (header only) and size, no mtime."""
        from pneumoscan.data.dicom_ids import read_dicom_identifiers

        return cls(name, error, reason, read_dicom_identifiers(data), len(data))


def result_rows(meta, sources: Sequence[Source], probabilities: Sequence[float], gate=None,
                scope_check: bool = True, viral: Sequence[float] | None = None) -> list[Prediction]:
    """The rows of ``sources``, in order: ``probabilities`` (and the scope ``gate``'s output, rows of
    ``(K,)`` or None, and ``viral``, the subtype head's calibrated probabilities or None) are those of the
    sources without ``error``, in order.

    The label is the model's (``meta.label``, at its stored threshold); an image the rules or the
    learned gate refuse gets no probability and no label but its reason, unless ``scope_check`` is off:
    then it is scored and marked. Only a PNEUMONIA answer carries a subtype.
    """
    scored = iter(range(len(probabilities)))
    rows = []
    for source in sources:
        probability, error, viral_probability = None, source.error, None
        if error is None:
            i = next(scored)
            reason = source.reason
            if reason is None and gate is not None:
                reason = scope.gate_reason(meta, gate[i])
            if reason is None or not scope_check:
                probability = float(probabilities[i])
                if viral is not None and meta.label(probability) == meta.class_names[1]:
                    viral_probability = float(viral[i])
            error = None if reason is None else (scope.check_off_message(source.file, reason) if not scope_check
                                                 else scope.message(source.file, reason))
        rows.append(Prediction(
            file=source.file, probability=probability,
            label=None if probability is None else meta.label(probability),
            subtype=None if viral_probability is None else meta.subtype_label(viral_probability),
            viral_probability=viral_probability,
            threshold=float(meta.threshold), model=meta.name, version=meta.version, error=error,
            **{name: source.ids.get(name) for name in ID_COLUMNS},
            size=source.size, mtime_ns=source.mtime_ns,
        ))
    if next(scored, None) is not None:
        raise ValueError(f"{len(probabilities)} probabilities for fewer sources without an error")
    return rows


def file_stat(path: str | os.PathLike) -> tuple[int | None, int | None]:
    """A file's size and modification time (ns), the resume key's parts; ``(None, None)`` when it cannot be read."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None, None
    return st.st_size, st.st_mtime_ns


def records(rows: Iterable[Prediction]) -> list[dict[str, Any]]:
    """The rows as dicts of the :data:`COLUMNS`."""
    return [row.record() for row in rows]


def _id_columns() -> tuple[str, ...]:
    from pneumoscan.data.dicom_ids import DICOM_ID_COLUMNS

    missing = set(DICOM_ID_COLUMNS) - set(COLUMNS)
    if missing:  # the identifiers read from a DICOM are columns of every result
        raise RuntimeError(f"Prediction lacks the DICOM identifier columns {sorted(missing)}")
    return tuple(DICOM_ID_COLUMNS)


ID_COLUMNS = _id_columns()

__all__ = ["COLUMNS", "ID_COLUMNS", "Prediction", "Source", "column_kinds", "file_stat", "records", "result_rows"]
