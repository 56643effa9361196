"""Turn what is on disk into :class:`Sample` records: one function per source, one entry point.

``load_dataset(root)`` recognises the source from what it finds:

* class folders (Kaggle/Mendeley): ``ROOT/{train,val,test}/{NORMAL,PNEUMONIA}/`` or ``ROOT/{NORMAL,PNEUMONIA}/``
* the RSNA Pneumonia Detection Challenge: ``stage_2_train_labels.csv`` with ``stage_2_train_images/*.dcm``
* a CSV manifest: ``path,label[,patient_id][,split]``
* MedMNIST ``pneumoniamnist*.npz``
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from pneumoscan.data.image import IMAGE_SUFFIXES
from pneumoscan.data.records import CLASS_NAMES, SPLITS, Sample
from pneumoscan.errors import DatasetError

_IGNORED_NAMES = {".ds_store", "__macosx", "thumbs.db", ".ipynb_checkpoints"}
_SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val",
                  "validation": "val", "test": "test", "testing": "test"}


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


def load_dataset(root: str | os.PathLike) -> DataIndex:
    """List the samples under ``root`` (a folder, a CSV manifest/RSNA label file, or an ``.npz``).

    Nothing is decoded here: unreadable images are found by ``validate_dataset`` or skipped by the
    cache. Raises :class:`DatasetError` (one line, naming the file and the fix) when ``root`` is not a
    dataset: no class folders, an empty class, a CSV without a needed column or with an unknown label.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise DatasetError(f"{root}: no such file or folder; pass a dataset folder, a CSV manifest or an .npz")
    if root.is_file():
        if root.suffix.lower() == ".npz":
            from pneumoscan.data.medmnist import load_medmnist

            return load_medmnist(root)
        if root.suffix.lower() == ".csv":
            from pneumoscan.data.manifest import is_rsna_labels, load_manifest
            from pneumoscan.data.rsna import load_rsna

            return load_rsna(root) if is_rsna_labels(root) else load_manifest(root)
        raise DatasetError(f"{root}: unsupported dataset file; expected a folder, a .csv manifest or an .npz")
    rsna_labels = root / "stage_2_train_labels.csv"
    if rsna_labels.is_file():
        from pneumoscan.data.rsna import load_rsna

        return load_rsna(rsna_labels)
    npz = sorted(root.glob("pneumoniamnist*.npz"))
    if npz and not _class_or_split_dirs(root):
        from pneumoscan.data.medmnist import load_medmnist

        return load_medmnist(npz[0])
    return load_folders(root)


def load_folders(root: Path) -> DataIndex:
    """Class folders, with or without split folders above them (names case-insensitive)."""
    notes: list[str] = []
    root = _descend_archive_wrapper(root, notes)
    layout = _class_or_split_dirs(root)
    if not layout:
        found = sorted(p.name for p in _visible_dirs(root))
        raise DatasetError(
            f"{root}: no class folders; expected NORMAL/ and PNEUMONIA/ (optionally under train/, val/, test/) "
            f"(found: {', '.join(found) or 'no folders'})"
        )
    samples: list[Sample] = []
    ignored: Counter[str] = Counter()
    _note_stray_files(root, layout, ignored)
    _note_unused_folders(root, layout, notes)
    for split, class_dirs in layout.items():
        for label, class_dir in class_dirs.items():
            for path in _walk_images(class_dir, ignored):
                samples.append(Sample(path, label, kermany_patient_id(path.stem), split))
    for name, count in sorted(ignored.items()):
        notes.append(f"ignored {count} {name}")
    _check_classes(root, samples, layout)
    samples.sort(key=lambda s: (SPLITS.index(s.split) if s.split in SPLITS else 9, s.label, str(s.path)))
    return DataIndex(root, "folders", samples, notes)


_PERSON = re.compile(r"person(\d+)(?:_([a-z]+))?", re.IGNORECASE)
_IM = re.compile(r"(?:^|(?P<series>[a-z0-9]+)-)IM-(?P<number>\d+)-", re.IGNORECASE)


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


def _descend_archive_wrapper(root: Path, notes: list[str]) -> Path:
    # The public archive unpacks to chest_xray/ holding the splits, a duplicated nested
    # chest_xray/chest_xray/ copy and a __MACOSX/ folder of resource forks.
    start, descended = root, []
    while not _class_or_split_dirs(root):
        inner = [d for d in _visible_dirs(root) if d.name.lower() not in _IGNORED_NAMES]
        if len(inner) != 1:
            break
        descended.append(f"using {inner[0]} (the archive's top folder)")
        root = inner[0]
    if not _class_or_split_dirs(root):
        return start  # nothing found below: the error should name what the user passed
    notes.extend(descended)
    for dup in _visible_dirs(root):
        if dup.name.lower() == "chest_xray":
            notes.append(f"ignored {dup}: the public archive's duplicated nested copy")
    if (root / "__MACOSX").exists() or (root.parent / "__MACOSX").exists():
        notes.append("ignored __MACOSX/ (macOS resource forks)")
    return root


def _class_or_split_dirs(root: Path) -> dict[str | None, dict[int, Path]]:
    """{split or None: {label: folder}} for the layout under ``root``, or {} when there is none."""
    classes = _class_dirs(root)
    if classes:
        return {None: classes}
    layout: dict[str | None, dict[int, Path]] = {}
    for child in _visible_dirs(root):
        split = _SPLIT_ALIASES.get(child.name.lower())
        if split and (classes := _class_dirs(child)):
            layout[split] = classes
    return layout


def _class_dirs(folder: Path) -> dict[int, Path]:
    wanted = {name.lower(): label for label, name in enumerate(CLASS_NAMES)}
    return {wanted[d.name.lower()]: d for d in _visible_dirs(folder) if d.name.lower() in wanted}


def _visible_dirs(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []


def _walk_images(folder: Path, ignored: Counter[str]) -> list[Path]:
    found: list[Path] = []
    # followlinks=False: a symlink loop cannot make us walk forever.
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        kept = []
        for d in dirnames:
            if d.lower() in _IGNORED_NAMES or d.startswith("."):
                ignored[f"{d}/ folders"] += 1
            else:
                kept.append(d)
        dirnames[:] = sorted(kept)
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if name.lower() in _IGNORED_NAMES or name.startswith("._"):
                ignored[f"{name} files"] += 1
            elif path.suffix.lower() in IMAGE_SUFFIXES:
                found.append(path)
            else:
                ignored["files without an image extension"] += 1
    return found


def _note_unused_folders(root: Path, layout: dict[str | None, dict[int, Path]], notes: list[str]) -> None:
    """A note for every folder beside the class (or split) folders that is not used, and why: a
    ``COVID19/`` next to ``NORMAL/`` and ``PNEUMONIA/`` must not vanish without a word."""
    used = {folder for classes in layout.values() for folder in classes.values()}
    parents = {folder.parent for folder in used}
    split_parents = {p.parent for p in parents} if None not in layout else set()
    for folder in sorted(parents | split_parents):
        for child in _visible_dirs(folder):
            name = child.name.lower()
            if child in used or child in parents or name in _IGNORED_NAMES or name == "chest_xray":
                continue
            images = sum(1 for _, _, files in os.walk(child) for f in files if Path(f).suffix.lower() in IMAGE_SUFFIXES)
            if folder in split_parents:
                why = (f"not a split folder (splits are train, val, test) or it holds no "
                       f"{' and '.join(CLASS_NAMES)} folders")
            else:
                why = f"not a class folder (the classes are {' and '.join(CLASS_NAMES)})"
            notes.append(f"ignored {child}/: {why}; its {images} image(s) are not used")


def _note_stray_files(root: Path, layout: dict[str | None, dict[int, Path]], ignored: Counter[str]) -> None:
    """Count the junk beside the class folders (the public archive's ``.DS_Store``), for a note."""
    folders = {root} | ({next(iter(d.values())).parent for d in layout.values()} if layout else set())
    for folder in sorted(folders):
        try:
            entries = list(folder.iterdir())
        except OSError:
            continue
        for entry in entries:
            if entry.is_file() and (entry.name.lower() in _IGNORED_NAMES or entry.name.startswith("._")):
                ignored[f"{entry.name} files"] += 1


def _check_classes(root: Path, samples: list[Sample], layout: dict[str | None, dict[int, Path]]) -> None:
    present = {s.path.parent for s in samples}
    for class_dirs in layout.values():
        for label, folder in class_dirs.items():
            if not any(p == folder or folder in p.parents for p in present):
                raise DatasetError(
                    f"{folder}: empty {CLASS_NAMES[label]} folder (no .jpeg/.png/.dcm images); "
                    "add its images or remove the folder"
                )
    counts = Counter(s.label for s in samples)
    for label, name in enumerate(CLASS_NAMES):
        if counts[label] == 0:
            folders = [str(d[label]) for d in layout.values() if label in d]
            where = ", ".join(folders) if folders else f"{root}/{name}/"
            raise DatasetError(
                f"{where}: no {name} images; a classifier needs images of both classes "
                f"(add .jpeg/.png/.dcm files there or point to another folder)"
            )
