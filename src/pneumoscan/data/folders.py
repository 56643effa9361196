"""Class folders on disk (Kaggle/Mendeley layout) -> :class:`Sample` records.

``ROOT/{train,val,test}/{NORMAL,PNEUMONIA}/`` or ``ROOT/{NORMAL,PNEUMONIA}/``, names case-insensitive; the
public archive's wrapper folder, nested duplicate and ``__MACOSX/`` are recognised and skipped.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from pneumoscan.data.image import IMAGE_SUFFIXES
from pneumoscan.data.records import (
    CLASS_NAMES,
    SPLITS,
    DataIndex,
    Sample,
    kermany_patient_id,
    kermany_subtype,
    split_name,
)
from pneumoscan.errors import DatasetError

_IGNORED_NAMES = {".ds_store", "__macosx", "thumbs.db", ".ipynb_checkpoints"}


def load_folders(root: Path) -> DataIndex:
    """Class folders, with or without split folders above them (names case-insensitive)."""
    notes: list[str] = []
    root = _descend_archive_wrapper(root, notes)
    layout = class_or_split_dirs(root)
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
                samples.append(Sample(path, label, kermany_patient_id(path.stem), split,
                                      kermany_subtype(path.stem) if label == 1 else None))
    for name, count in sorted(ignored.items()):
        notes.append(f"ignored {count} {name}")
    _check_classes(root, samples, layout)
    samples.sort(key=lambda s: (SPLITS.index(s.split) if s.split in SPLITS else 9, s.label, str(s.path)))
    return DataIndex(root, "folders", samples, notes)


def _descend_archive_wrapper(root: Path, notes: list[str]) -> Path:
    # The public archive unpacks to chest_xray/ holding the splits, a duplicated nested
    # chest_xray/chest_xray/ copy and a __MACOSX/ folder of resource forks.
    start, descended = root, []
    while not class_or_split_dirs(root):
        inner = [d for d in _visible_dirs(root) if d.name.lower() not in _IGNORED_NAMES]
        if len(inner) != 1:
            break
        descended.append(f"using {inner[0]} (the archive's top folder)")
        root = inner[0]
    if not class_or_split_dirs(root):
        return start  # nothing found below: the error should name what the user passed
    notes.extend(descended)
    for dup in _visible_dirs(root):
        if dup.name.lower() == "chest_xray":
            notes.append(f"ignored {dup}: the public archive's duplicated nested copy")
    if (root / "__MACOSX").exists() or (root.parent / "__MACOSX").exists():
        notes.append("ignored __MACOSX/ (macOS resource forks)")
    return root


def class_or_split_dirs(root: Path) -> dict[str | None, dict[int, Path]]:
    """{split or None: {label: folder}} for the layout under ``root``, or {} when there is none."""
    classes = _class_dirs(root)
    if classes:
        return {None: classes}
    layout: dict[str | None, dict[int, Path]] = {}
    for child in _visible_dirs(root):
        split = split_name(child.name)
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
