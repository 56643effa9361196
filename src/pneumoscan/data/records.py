"""The one record type that flows through the pipeline."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CLASS_NAMES: tuple[str, str] = ("NORMAL", "PNEUMONIA")
"""Label 0 is NORMAL, label 1 is PNEUMONIA (the positive class) everywhere in pneumoscan."""

SPLITS: tuple[str, ...] = ("train", "val", "test")


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int | None  # 0 normal, 1 pneumonia, None when unknown (prediction)
    patient_id: str  # splits are made on this, never on rows
    split: str | None = None  # "train", "val" or "test" when the source says so

    def with_split(self, split: str | None) -> Sample:
        return Sample(self.path, self.label, self.patient_id, split)
