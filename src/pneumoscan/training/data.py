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

from pneumoscan.data import ImageCache, Sample, build_cache, default_data_root, load_dataset, split_by_patient
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
    crop_sources: np.ndarray | None = None  # the training images, larger, for random crops (or None)

    @property
    def train_labels(self) -> np.ndarray:
        return np.array([s.label for s in self.train_samples], dtype=np.float32)

    @property
    def val_labels(self) -> np.ndarray:
        return np.array([s.label for s in self.val_samples], dtype=np.float32)

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


def _listed(config: TrainConfig) -> tuple[Path, list[Sample], list[Sample], list[Sample], list[str]]:
    """(root, train, validation, held-out test samples, notes): listed and split by the rules of ``config``.

    Deterministic (the split and the limits are seeded), so every process of a run finds the same split.
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
    test = [s for s in samples if s.split == "test"]
    return root, train, val, test, list(index.notes)


def _decoded(config: TrainConfig, progress: bool, warn: bool) -> tuple[Path, ImageCache, list[tuple[str, str]],
                                                                       list[Sample], list[str]]:
    """(root, the cache of the train and validation images, their failures, test samples, notes); the
    cache is built when missing. ``warn`` logs each undecodable file.

    Raises :class:`DatasetError` when the root is missing or a split ends up without both classes.
    """
    root, train, val, test, notes = _listed(config)
    cache = build_cache(train + val, config.image_size, config.fit, progress=progress)  # type: ignore[arg-type]
    wanted = {os.path.abspath(s.path) for s in train + val}
    failures = [(p, r) for p, r in cache.failures if os.path.abspath(p) in wanted]
    for path, reason in failures if warn else ():
        log.warning("skipped an undecodable image: %s", reason or path)
    for name, split in (("training", "train"), ("validation", "val")):
        present = {s.label for s in cache.samples if s.split == split}
        if present != {0, 1}:
            count = sum(s.split == split for s in cache.samples)
            raise DatasetError(
                f"{root}: the {name} split has {count} decodable images of classes {sorted(present)}; "
                "it needs both NORMAL and PNEUMONIA (add images or change --val-fraction / --limit-*-images)"
            )
    return root, cache, failures, test, notes


def _crop_cache(config: TrainConfig, train: list[Sample], progress: bool) -> ImageCache | None:
    """The cache of the training images at :attr:`TrainConfig.train_image_size`, built when missing, or None
    when that is ``image_size`` (validation and inference always use ``image_size``)."""
    size = config.train_image_size
    return None if size == config.image_size else build_cache(train, size, config.fit, progress=progress)  # type: ignore[arg-type]


def _crop_sources(config: TrainConfig, train: list[Sample], progress: bool) -> np.ndarray | None:
    """The training images at :attr:`TrainConfig.train_image_size`, in the order of ``train`` (or None)."""
    cache = _crop_cache(config, train, progress)
    if cache is None:
        return None
    images, samples = cache.subset("train")
    if [s.path for s in samples] != [s.path for s in train]:  # a file changed between the two reads
        raise DatasetError(f"{config.data or 'the data'}: the training images changed while they were being "
                           "cached; run again")
    return images


def _limit(samples: list[Sample], limit: int | None, rng: random.Random) -> list[Sample]:
    if limit is None or len(samples) <= limit:
        return samples
    keep = sorted(rng.sample(range(len(samples)), limit))
    return [samples[i] for i in keep]


class UInt8Images(Dataset):
    """(image uint8 (1, S, S), label float32) pairs over an in-memory array; with ``teacher`` (a teacher's
    probability per image), (image, label, teacher probability) triples."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, teacher: np.ndarray | None = None) -> None:
        self.images = torch.from_numpy(np.ascontiguousarray(images))
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.float32))
        self.teacher = None if teacher is None else torch.from_numpy(np.asarray(teacher, dtype=np.float32))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        if self.teacher is None:
            return self.images[index].unsqueeze(0), self.labels[index]
        return self.images[index].unsqueeze(0), self.labels[index], self.teacher[index]


class XrayDataModule(L.LightningDataModule):
    """The training data in Lightning's two hooks; validation is never augmented or resampled.

    ``prepare_data`` is the work done once, before any process reads the data: list the data, split it
    (by patient, never touching the test split), decode the images into the on-disk cache and write the
    run's ``split.csv`` (to ``split_file``, given to one process only). ``setup`` runs in every process:
    the same seeded split, read back from the cache into :attr:`data` and the datasets. Undecodable
    files are skipped and listed in ``data.failures``.
    """

    def __init__(self, config: TrainConfig, on_gpu: bool = False, *, split_file: Path | None = None,
                 progress: bool = False) -> None:
        super().__init__()
        self.config = config
        self.on_gpu = on_gpu
        self.split_file = split_file
        self.progress = progress
        self.data: PreparedData | None = None  # set by setup, or given
        self.train_set: UInt8Images | None = None
        self.val_set: UInt8Images | None = None
        # a teacher's probability of each training image, un-augmented (--distill-view original), or None
        self.teacher_scores: np.ndarray | None = None
        # Lightning calls the hooks again inside fit and predict; a run has called them before (its
        # module needs the class counts), and the work is not to be done twice.
        self._prepared = False

    def prepare_data(self) -> None:
        if self._prepared or self.data is not None:
            return
        _, cache, _, test, _ = _decoded(self.config, self.progress, warn=True)
        # built once, here, before any process reads it
        _crop_cache(self.config, [s for s in cache.samples if s.split == "train"], self.progress)
        if self.split_file is not None:
            from pneumoscan.data import write_manifest

            # Every image used (decodable train and validation, held-out test), in a stable order.
            rows = sorted(cache.samples + test, key=lambda s: (s.split or "", str(s.path)))
            write_manifest(rows, self.split_file)
        self._prepared = True

    def setup(self, stage: str) -> None:
        if self.data is None:
            root, cache, failures, test, notes = _decoded(self.config, progress=False, warn=False)
            train_images, train_samples = cache.subset("train")
            val_images, val_samples = cache.subset("val")
            self.data = PreparedData(root, train_images, train_samples, val_images, val_samples, failures, notes,
                                     test, _crop_sources(self.config, train_samples, self.progress))
        if self.train_set is None or self.val_set is None:
            sources = self.data.train_images if self.data.crop_sources is None else self.data.crop_sources
            self.train_set = UInt8Images(sources, self.data.train_labels, self.teacher_scores)
            self.val_set = UInt8Images(self.data.val_images, self.data.val_labels)

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

    def predict_dataloader(self) -> DataLoader:
        """The validation images in order: what the best weights are scored on after fitting."""
        return self._loader(self.val_set, shuffle=False)
