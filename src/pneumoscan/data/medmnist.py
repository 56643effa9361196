"""MedMNIST's PneumoniaMNIST (``pneumoniamnist*.npz``): its own train/val/test arrays, labels 0/1.

The arrays are written once as PNG files under ``<cache_root>/medmnist/<key>/<split>/<CLASS>/`` so that
every later stage reads paths like any other source. The key hashes the npz's path, size and
modification time: a changed file is materialised again.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from pneumoscan._io import atomic_write_json
from pneumoscan.data.defaults import cache_root
from pneumoscan.data.records import CLASS_NAMES, SPLITS, DataIndex, Sample
from pneumoscan.errors import DatasetError

_FORMAT = 1
_NOTE = ("MedMNIST has no patient ids: each image is its own patient, so a patient-level split cannot "
         "be guaranteed (use the npz's own train/val/test arrays)")


def load_medmnist(npz: str | os.PathLike, folder: str | os.PathLike | None = None):
    """Read ``npz`` into a :class:`~pneumoscan.data.records.DataIndex`, materialising its images as PNGs.

    ``folder`` is where the PNGs go (default: under :func:`cache_root`); they are written only once.
    Missing arrays, mismatched lengths or labels other than 0/1 are a :class:`DatasetError`.
    """
    npz = Path(npz)
    st = npz.stat()
    key = hashlib.sha256(f"{_FORMAT}|{os.path.abspath(npz)}|{st.st_size}|{st.st_mtime_ns}".encode("utf-8", "surrogateescape")).hexdigest()[:16]
    target = Path(folder) if folder is not None else cache_root() / "medmnist" / f"{npz.stem}-{key}"
    marker = target / "materialised.json"
    if not marker.is_file():
        _materialise(npz, target, marker)
    samples: list[Sample] = []
    for split in SPLITS:
        for label, name in enumerate(CLASS_NAMES):
            for path in sorted((target / split / name).glob("*.png")):
                samples.append(Sample(path, label, path.stem, split))
    return DataIndex(npz, "medmnist", samples, [_NOTE, f"images materialised as PNG in {target}"])


def _materialise(npz: Path, target: Path, marker: Path) -> None:
    try:
        arrays = np.load(npz, allow_pickle=False)  # never unpickle a downloaded file
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DatasetError(f"{npz}: not a readable .npz ({exc}); download it again") from None
    counts: dict[str, int] = {}
    with arrays:
        for split in SPLITS:
            images, labels = _arrays(arrays, npz, split)
            for name in CLASS_NAMES:
                (target / split / name).mkdir(parents=True, exist_ok=True)
            for i, (pixels, label) in enumerate(zip(images, labels, strict=True)):
                mode = "RGB" if pixels.ndim == 3 else "L"
                # The split in the stem keeps stems (the patient ids) unique across splits.
                path = target / split / CLASS_NAMES[label] / f"{split}-{i:05d}.png"
                Image.fromarray(pixels, mode).save(path)
            counts[split] = len(labels)
    # Written last: a killed run leaves no marker, and the next one writes the PNGs again.
    atomic_write_json(marker, {"format": _FORMAT, "source": str(npz), "counts": counts})


def _arrays(arrays, npz: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    keys = (f"{split}_images", f"{split}_labels")
    missing = [k for k in keys if k not in arrays.files]
    if missing:
        raise DatasetError(
            f"{npz}: missing array(s) {', '.join(missing)}; expected MedMNIST's "
            "train/val/test _images and _labels (download pneumoniamnist.npz again)"
        )
    images, labels = np.asarray(arrays[keys[0]]), np.asarray(arrays[keys[1]]).reshape(-1)
    if len(images) != len(labels) or images.ndim not in (3, 4) or images.dtype != np.uint8:
        raise DatasetError(
            f"{npz}: {keys[0]} has shape {images.shape} and dtype {images.dtype} for {len(labels)} labels; "
            "expected N x H x W uint8 images, one label each"
        )
    bad = sorted(set(np.unique(labels).tolist()) - {0, 1})
    if bad:
        raise DatasetError(f"{npz}: {keys[1]} holds {bad}; PneumoniaMNIST labels are 0 (normal) and 1 (pneumonia)")
    return images, labels.astype(np.int64)
