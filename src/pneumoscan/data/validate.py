"""Decode every file of a dataset and list the ones that fail, with the reason."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from pneumoscan.data._parallel import parallel_map
from pneumoscan.data.image import read_image
from pneumoscan.errors import ImageReadError


@dataclass
class ValidationReport:
    """The outcome of :func:`validate_dataset`: ``bad`` holds (file, reason) for every unreadable file."""

    root: Path
    source: str
    checked: int
    bad: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.bad


def check_file(path: str) -> str | None:
    """None when ``path`` decodes fully, else the reason it does not (never raises for a bad file)."""
    try:
        read_image(path)
    except ImageReadError as exc:
        return str(exc).removeprefix(f"{path}: ")
    except Exception as exc:  # noqa: BLE001 - a decoder bug on one file must not stop the check
        return f"unexpected decoding error ({type(exc).__name__}: {exc})"
    return None


def validate_dataset(
    root: str | os.PathLike, workers: int | None = None, progress: bool = False
) -> ValidationReport:
    """Fully decode every image file of the dataset at ``root`` (any source :func:`load_dataset` reads).

    Zero-byte, truncated, non-image, wrong-extension and oversized files are reported, never raised;
    so is each file a manifest lists that does not exist.
    """
    from pneumoscan.data.sources import load_dataset

    index = load_dataset(root)
    paths = [str(s.path) for s in index.samples]
    reasons = parallel_map(check_file, paths, workers, progress, desc="validating")
    bad = [(path, reason) for path, reason in zip(paths, reasons, strict=True) if reason is not None]
    bad += [(str(path), f"listed in {index.root.name} but does not exist") for path in index.missing]
    return ValidationReport(index.root, index.source, len(paths) + len(index.missing), bad, list(index.notes))
