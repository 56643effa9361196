"""Turn what is on disk into :class:`Sample` records: one function per source, one entry point.

``load_dataset(root)`` recognises the source from what it finds:

* class folders (Kaggle/Mendeley): ``ROOT/{train,val,test}/{NORMAL,PNEUMONIA}/`` or ``ROOT/{NORMAL,PNEUMONIA}/``
  (:mod:`~pneumoscan.data.folders`)
* the RSNA Pneumonia Detection Challenge: ``stage_2_train_labels.csv`` with ``stage_2_train_images/*.dcm``
  (:mod:`~pneumoscan.data.rsna`)
* a CSV manifest: ``path,label[,patient_id][,split]`` (:mod:`~pneumoscan.data.manifest`)
* MedMNIST ``pneumoniamnist*.npz`` (:mod:`~pneumoscan.data.medmnist`)

Each source module imports only :mod:`~pneumoscan.data.records` (``Sample``, ``DataIndex``); this
dispatcher imports them, never the other way round.
"""

from __future__ import annotations

import os
from pathlib import Path

from pneumoscan.data.folders import class_or_split_dirs, load_folders
from pneumoscan.data.records import DataIndex, kermany_patient_id
from pneumoscan.errors import DatasetError

__all__ = ["DataIndex", "kermany_patient_id", "load_dataset", "load_folders"]


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
    if npz and not class_or_split_dirs(root):
        from pneumoscan.data.medmnist import load_medmnist

        return load_medmnist(npz[0])
    return load_folders(root)
