"""Patient-level, class-stratified train/validation split: no patient is ever in two splits."""

from __future__ import annotations

import os
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from pneumoscan.data.records import CLASS_NAMES, SPLITS, Sample
from pneumoscan.errors import ConfigError


def split_by_patient(
    samples: list[Sample], val_fraction: float = 0.1, seed: int = 0, test_fraction: float = 0.0
) -> list[Sample]:
    """Return ``samples`` with ``split`` set to ``train``, ``val`` (or ``test``) for every non-test sample.

    The pool is every sample not marked ``test`` (the official 16-image ``val`` of the Kermany
    release joins it: too small to select models on). Patients are shuffled per class with ``seed``
    and ``val_fraction`` of each class's patients go to validation. A patient's class is pneumonia
    if any of their images is. Patients that also appear in the test split are dropped from the pool,
    so that the test split stays unseen even when the source itself leaks.

    When the source has no test split and ``test_fraction`` > 0, that share of each class's patients is
    held out first as ``test``: a split no training or model selection ever sees, for an honest estimate.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"--val-fraction: must be between 0 and 1, not {val_fraction}")
    if not 0.0 <= test_fraction < 1.0 - val_fraction:
        raise ConfigError(f"--test-fraction: must be at least 0 and below 1 - val-fraction, not {test_fraction}")
    source_test = [s for s in samples if s.split == "test"]
    test_patients = {s.patient_id for s in source_test}
    pool = [s for s in samples if s.split != "test" and s.patient_id not in test_patients]
    patient_label: dict[str, int] = defaultdict(int)
    for s in pool:
        patient_label[s.patient_id] = max(patient_label[s.patient_id], int(s.label or 0))
    carve = [("val", val_fraction)]
    if test_fraction > 0 and not source_test:
        carve.insert(0, ("test", test_fraction))
    rng = random.Random(seed)
    held_out: dict[str, str] = {}
    for label in sorted(set(patient_label.values())):
        patients = sorted(p for p, lab in patient_label.items() if lab == label)
        rng.shuffle(patients)
        start = 0
        for split, fraction in carve:
            left = len(patients) - start
            n = min(round(len(patients) * fraction), left)
            if left >= 2:  # at least one patient per held-out split while one stays for training
                n = min(max(n, 1), left - 1)
            held_out.update((p, split) for p in patients[start : start + n])
            start += n
    return [s.with_split(held_out.get(s.patient_id, "train")) for s in pool] + source_test


@dataclass
class SplitResult:
    """What :func:`split_dataset` wrote: the manifest and the counts per split and class."""

    manifest: Path
    samples: list[Sample]
    dropped_patients: list[str]  # in the source's test split and also elsewhere: left out of train/val
    notes: list[str]

    def counts(self) -> dict[str, dict[str, int]]:
        """{split: {"images": n, "patients": n, "NORMAL": n, "PNEUMONIA": n}}."""
        table: dict[str, dict[str, int]] = {}
        for split in sorted({s.split or "" for s in self.samples}, key=_split_order):
            rows = [s for s in self.samples if (s.split or "") == split]
            table[split] = {"images": len(rows), "patients": len({s.patient_id for s in rows})}
            for label, name in enumerate(CLASS_NAMES):
                table[split][name] = sum(1 for s in rows if s.label == label)
        return table


def split_dataset(
    root: str | os.PathLike, out: str | os.PathLike, val_fraction: float = 0.1, seed: int = 0,
    test_fraction: float = 0.0,
) -> SplitResult:
    """Split the dataset at ``root`` by patient (:func:`split_by_patient`) and write the manifest ``out``.

    The manifest (``path,label,patient_id,split,subtype``) is what ``load_dataset(out)`` reads back.
    """
    from pneumoscan.data.manifest import write_manifest
    from pneumoscan.data.sources import load_dataset

    index = load_dataset(root)
    test_patients = {s.patient_id for s in index.samples if s.split == "test"}
    dropped = sorted({s.patient_id for s in index.samples if s.split != "test" and s.patient_id in test_patients})
    samples = split_by_patient(index.samples, val_fraction, seed, test_fraction)
    notes = list(index.notes)
    if dropped:
        notes.append(f"left out {len(dropped)} patients who are also in the test split (e.g. {dropped[0]})")
    manifest = write_manifest(samples, out)
    return SplitResult(manifest, samples, dropped, notes)


def _split_order(split: str) -> int:
    return SPLITS.index(split) if split in SPLITS else len(SPLITS)
