"""The one record type that flows through the pipeline, the index of a dataset, and the naming rules
every source shares (class names, split names, patient ids from Kermany file names)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

CLASS_NAMES: tuple[str, str] = ("NORMAL", "PNEUMONIA")
"""Label 0 is NORMAL, label 1 is PNEUMONIA (the positive class) everywhere in pneumoscan."""

SUBTYPES: tuple[str, str] = ("bacterial", "viral")
"""The pneumonia subtypes, in the order of the subtype head's target (viral is the positive class)."""
# What file names and manifests call them (any case); Kermany names say ``person12_bacteria_45``.
SUBTYPE_ALIASES: dict[str, str] = {"bacterial": "bacterial", "bacteria": "bacterial", "viral": "viral",
                                   "virus": "viral"}

SPLITS: tuple[str, ...] = ("train", "val", "test")
# What folders and manifests call the splits (any case).
SPLIT_ALIASES: dict[str, str] = {"train": "train", "training": "train", "val": "val", "valid": "val",
                                 "validation": "val", "test": "test", "testing": "test"}


def split_name(text: str) -> str | None:
    """The split a folder or manifest name stands for (``Validation`` -> ``val``), or None."""
    return SPLIT_ALIASES.get(text.strip().lower())


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int | None  # 0 normal, 1 pneumonia, None when unknown (prediction)
    patient_id: str  # splits are made on this, never on rows
    split: str | None = None  # "train", "val" or "test" when the source says so
    # "bacterial" or "viral" for a PNEUMONIA image whose source says which (Kermany file names, a manifest's
    # subtype column); None when unknown, and always for NORMAL: an unknown subtype is masked, never guessed.
    subtype: str | None = None

    def with_split(self, split: str | None) -> Sample:
        return Sample(self.path, self.label, self.patient_id, split, self.subtype)


@dataclass
class DataIndex:
    """The samples of one source, with what was noticed while listing them."""

    root: Path
    source: str  # "folders", "rsna", "manifest", "medmnist"
    samples: list[Sample]
    notes: list[str] = field(default_factory=list)
    missing: list[Path] = field(default_factory=list)  # files a manifest lists that do not exist

    def by_split(self, split: str) -> list[Sample]:
        return [s for s in self.samples if s.split == split]

    @property
    def splits(self) -> list[str]:
        present = {s.split for s in self.samples}
        return [s for s in (*SPLITS, None) if s in present]


_PERSON = re.compile(r"person(\d+)(?:_([a-z]+))?", re.IGNORECASE)
_IM = re.compile(r"(?:^|(?P<series>[a-z0-9]+)-)IM-(?P<number>\d+)-", re.IGNORECASE)


def follows_kermany_naming(stem: str) -> bool:
    """Whether a file stem follows one of the Kermany numbering schemes (``person…``, ``…IM-…-``)."""
    return bool(_PERSON.search(stem) or _IM.search(stem))


def kermany_subtype(stem: str) -> str | None:
    """The pneumonia subtype a Kermany file name states (``person1449_bacteria_3745`` -> ``bacterial``,
    ``person1_virus_6`` -> ``viral``), else None."""
    match = _PERSON.search(stem)
    return SUBTYPE_ALIASES.get((match.group(2) or "").lower()) if match else None


def kermany_patient_id(stem: str) -> str:
    """Patient id from a Kermany file name, else the file stem.

    ``person1449_bacteria_3745`` -> ``person1449_bacteria``; ``IM-1427-0001`` -> ``IM-1427``;
    ``NORMAL2-IM-1427-0001`` -> ``NORMAL2-IM-1427``. Each numbering scheme counts on its own: the person
    number separately for bacterial and viral cases (in the official train 808 of 1,635 numbers occur
    with both types: two different children), and the normal studies in two series, plain ``IM-`` and
    ``NORMAL2-IM-`` (211 numbers of the official train occur in both). No (scheme, number) pair of the
    official test occurs in its train, while the bare numbers would pair 220 pneumonia and 44 normal
    test patients with training patients: a false leakage alarm, and patients wrongly dropped from
    training. Person and IM numbers are kept apart for the same reason.
    """
    if match := _PERSON.search(stem):
        kind = f"_{match.group(2).lower()}" if match.group(2) else ""
        return f"person{int(match.group(1))}{kind}"
    if match := _IM.search(stem):
        series = f"{match.group('series').upper()}-" if match.group("series") else ""
        return f"{series}IM-{int(match.group('number')):04d}"
    return stem
