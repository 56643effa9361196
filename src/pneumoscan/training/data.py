"""Training data: the patient-level split, decoded once into the cache, served as uint8 batches.

Images stay uint8 in RAM (a 128 px image is 16 KB); the model side turns a batch into float and augments
it on the training device, so the loader only indexes an array and never bounds the speed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from pneumoscan.data import Sample, build_cache, default_data_root, load_dataset, split_by_patient
from pneumoscan.errors import DatasetError
from pneumoscan.training.config import TrainConfig

log = logging.getLogger(__name__)


@dataclass
class PreparedData:
    """The decoded train and validation images with their samples, and what was skipped."""

    root: Path
    train_images: np.ndarray  # uint8 (N, S, S)
    train_samples: list[Sample]
    val_images: np.ndarray
    val_samples: list[Sample]
    failures: list[tuple[str, str]] = field(default_factory=list)  # (file, reason), never decoded
    notes: list[str] = field(default_factory=list)
    test_samples: list[Sample] = field(default_factory=list)  # held out, never decoded by training

    @property
    def train_labels(self) -> np.ndarray:
        return np.array([s.label for s in self.train_samples], dtype=np.float32)

    @property
    def val_labels(self) -> np.ndarray:
        return np.array([s.label for s in self.val_samples], dtype=np.float32)

    @property
    def all_samples(self) -> list[Sample]:
        """Every image used (train, validation, held-out test), in a stable order: what ``split.csv`` lists."""
        rows = self.train_samples + self.val_samples + self.test_samples
        return sorted(rows, key=lambda s: (s.split or "", str(s.path)))

    def manifest_hash(self) -> str:
        """SHA-256 of the split, with paths relative to the data root, so that it is portable."""
        lines = []
        for s in self.train_samples + self.val_samples:
            try:
                rel = os.path.relpath(s.path, self.root if self.root.is_dir() else self.root.parent)
            except ValueError:  # another drive (Windows)
                rel = str(s.path)
            lines.append(f"{rel},{s.label},{s.patient_id},{s.split}")
        return hashlib.sha256("\n".join(sorted(lines)).encode("utf-8", "surrogateescape")).hexdigest()


def _split_rule(split: str, index) -> str:
    """'auto' resolved: a source's own validation split when it is big enough to choose a threshold on."""
    if split != "auto":
        return split
    from pneumoscan.data.defaults import MIN_SOURCE_VAL_PER_CLASS

    val = Counter(s.label for s in index.samples if s.split == "val")
    own = all(val[label] >= MIN_SOURCE_VAL_PER_CLASS for label in (0, 1))
    log.info("--split auto: %s", "the source's own train/val splits" if own else "validation carved by patient")
    return "source" if own else "patient"


def prepare_data(config: TrainConfig, progress: bool = True) -> PreparedData:
    """List, split (by patient, never the test split) and decode the data of ``config``.

    Raises :class:`DatasetError` when the root is missing or a split ends up without both classes.
    Undecodable files are skipped and returned in ``failures``.
    """
    root = Path(config.data).expanduser() if config.data else default_data_root()
    index = load_dataset(root)
    if _split_rule(config.split, index) == "patient":
        samples = split_by_patient(index.samples, config.val_fraction, config.seed, config.test_fraction)
    else:
        samples = list(index.samples)
        if not any(s.split == "val" for s in samples):
            raise DatasetError(f"{root}: --split source needs a 'val' split in the data; use --split patient")
    train = [s for s in samples if s.split == "train" and s.label is not None]
    val = [s for s in samples if s.split == "val" and s.label is not None]
    rng = random.Random(config.seed)
    train = _limit(train, config.limit_train_images, rng)
    val = _limit(val, config.limit_val_images, rng)
    cache = build_cache(train + val, config.image_size, config.fit, progress=progress)  # type: ignore[arg-type]
    train_images, train_samples = cache.subset("train")
    val_images, val_samples = cache.subset("val")
    wanted = {os.path.abspath(s.path) for s in train + val}
    failures = [(p, r) for p, r in cache.failures if os.path.abspath(p) in wanted]
    for path, reason in failures:
        log.warning("skipped an undecodable image: %s", reason or path)
    for name, subset in (("training", train_samples), ("validation", val_samples)):
        present = {s.label for s in subset}
        if present != {0, 1}:
            raise DatasetError(
                f"{root}: the {name} split has {len(subset)} decodable images of classes {sorted(present)}; "
                "it needs both NORMAL and PNEUMONIA (add images or change --val-fraction / --limit-*-images)"
            )
    test = [s for s in samples if s.split == "test"]
    return PreparedData(root, train_images, train_samples, val_images, val_samples, failures, list(index.notes),
                        test)


def _limit(samples: list[Sample], limit: int | None, rng: random.Random) -> list[Sample]:
    if limit is None or len(samples) <= limit:
        return samples
    keep = sorted(rng.sample(range(len(samples)), limit))
    return [samples[i] for i in keep]


class UInt8Images(Dataset):
    """(image uint8 (1, S, S), label float32) pairs over an in-memory array."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images = torch.from_numpy(np.ascontiguousarray(images))
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.float32))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index].unsqueeze(0), self.labels[index]


class XrayDataModule(L.LightningDataModule):
    """Train and validation loaders over :class:`PreparedData`; validation is never augmented or resampled."""

    def __init__(self, data: PreparedData, config: TrainConfig, on_gpu: bool = False) -> None:
        super().__init__()
        self.data = data
        self.config = config
        self.on_gpu = on_gpu
        self.train_set = UInt8Images(data.train_images, data.train_labels)
        self.val_set = UInt8Images(data.val_images, data.val_labels)

    def _workers(self) -> int:
        if self.config.workers >= 0:
            return self.config.workers
        # On CPU, worker processes would only copy arrays that are already in RAM and compete with the
        # model for the same cores; on GPU they overlap host work with device work.
        return min(4, os.cpu_count() or 1) if self.on_gpu else 0

    def _loader(self, dataset: Dataset, shuffle: bool, sampler=None) -> DataLoader:
        workers = self._workers()
        return DataLoader(
            dataset, batch_size=self.config.batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
            num_workers=workers, pin_memory=self.on_gpu, persistent_workers=workers > 0,
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        sampler = None
        if self.config.sampler == "weighted":
            labels = self.data.train_labels.astype(np.int64)
            counts = np.bincount(labels, minlength=2)
            weights = (1.0 / counts[labels]).astype(np.float64)
            generator = torch.Generator().manual_seed(self.config.seed)
            sampler = WeightedRandomSampler(torch.from_numpy(weights), len(labels), replacement=True,
                                            generator=generator)
        return self._loader(self.train_set, shuffle=True, sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)
