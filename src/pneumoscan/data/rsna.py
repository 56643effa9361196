"""The RSNA Pneumonia Detection Challenge: ``stage_2_train_labels.csv`` beside ``stage_2_train_images/``.

The label file has one row per box (several rows for a patient with several opacities, one row with
``Target`` 0 for a patient without); each patient has one DICOM, ``<patientId>.dcm``. A patient is
PNEUMONIA (1) when any of their rows has ``Target`` 1. The challenge has no labelled test split, so
no split is set: ``pneumoscan data split`` or training makes one by patient.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from pneumoscan.data.records import DataIndex, Sample
from pneumoscan.errors import DatasetError

IMAGE_FOLDER = "stage_2_train_images"


def load_rsna(labels_csv: str | os.PathLike):
    """Read the RSNA label file into a :class:`~pneumoscan.data.records.DataIndex` (one sample per patient).

    Patients whose DICOM is missing are skipped and counted in a note; a label file without the
    ``patientId`` and ``Target`` columns or with a ``Target`` other than 0/1 is a :class:`DatasetError`.
    """
    labels_csv = Path(labels_csv)
    images = labels_csv.parent / IMAGE_FOLDER
    if not images.is_dir():
        raise DatasetError(
            f"{images}: folder of DICOMs not found; put the challenge's {IMAGE_FOLDER}/ beside {labels_csv.name}"
        )
    label_of: dict[str, int] = {}
    try:
        with open(labels_csv, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in ("patientId", "Target") if c not in (reader.fieldnames or [])]
            if missing:
                raise DatasetError(
                    f"{labels_csv}: missing column(s) {', '.join(missing)}; expected the challenge's "
                    "patientId,x,y,width,height,Target header"
                )
            for line, row in enumerate(reader, start=2):
                patient, target = (row["patientId"] or "").strip(), (row["Target"] or "").strip()
                if target not in ("0", "1") or not patient:
                    raise DatasetError(
                        f"{labels_csv}:{line}: unknown Target {target!r} for patient {patient!r}; "
                        "Target must be 0 or 1"
                    )
                label_of[patient] = max(label_of.get(patient, 0), int(target))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{labels_csv}: cannot read CSV ({exc}); check the file") from None
    samples: list[Sample] = []
    absent = 0
    for patient in sorted(label_of):
        path = images / f"{patient}.dcm"
        if path.is_file():
            samples.append(Sample(path, label_of[patient], patient, None))
        else:
            absent += 1
    notes = [f"one label per patient from {len(label_of)} patients (any Target 1 -> PNEUMONIA)"]
    if absent:
        notes.append(f"skipped {absent} patients whose DICOM is missing from {images}")
    if not samples:
        raise DatasetError(f"{images}: none of the {len(label_of)} patients' DICOMs found; check the folder")
    return DataIndex(labels_csv, "rsna", samples, notes)
