"""Decode and resize a dataset once into a compact uint8 array that training and evaluation read.

A cache lives in ``<cache_root>/images/<key>/`` with ``images.npy`` (N x S x S, uint8) and
``index.json`` (the samples, in the same order, and the files that failed to decode). The key hashes
the size, the fit and each file's path, size and modification time: a changed file means a new cache.
The folder is written under a temporary name and renamed, so a killed build never leaves a torn cache;
a cache whose array does not match its index is detected and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pneumoscan.data.defaults import cache_root
from pneumoscan.data.image import Fit, read_image
from pneumoscan.data.records import Sample
from pneumoscan.errors import ImageReadError

CACHE_FORMAT = 1


@dataclass
class ImageCache:
    """Decoded images and their samples: ``images[rows[i]]`` is the picture of ``samples[i]``.

    ``images`` is memory-mapped; it holds every decodable file of the cache, in path order, so that
    one cache serves any split of the same files.
    """

    folder: Path
    images: np.ndarray
    samples: list[Sample]
    rows: np.ndarray
    failures: list[tuple[str, str]]  # (file, reason) for every file that could not be decoded
    size: int
    fit: str
    reused: bool

    def labels(self) -> np.ndarray:
        return np.array([s.label if s.label is not None else -1 for s in self.samples], dtype=np.int64)

    def subset(self, split: str | None) -> tuple[np.ndarray, list[Sample]]:
        """The images (loaded into memory) and samples of one split; ``None`` means all."""
        keep = [i for i, s in enumerate(self.samples) if split is None or s.split == split]
        return np.ascontiguousarray(self.images[self.rows[keep]]), [self.samples[i] for i in keep]


def cache_key(paths: list[str], size: int, fit: str) -> str:
    """Hash of the size, fit and each file's path, size and mtime (not labels or splits)."""
    digest = hashlib.sha256(f"format={CACHE_FORMAT};size={size};fit={fit}".encode())
    for path in paths:
        try:
            st = os.stat(path)
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        digest.update(f"\n{path}|{stamp}".encode())
    return digest.hexdigest()[:20]


def build_cache(
    samples: list[Sample],
    size: int = 224,
    fit: Fit = "pad",
    folder: str | os.PathLike | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> ImageCache:
    """Return the cache for ``samples`` at ``size``, building it only when it is missing or stale.

    Files that cannot be decoded are left out and listed in ``failures``; they never stop the build.
    """
    base = Path(folder) if folder is not None else cache_root() / "images"
    paths = sorted({os.path.abspath(s.path) for s in samples})
    target = base / cache_key(paths, size, fit)
    cached = _load(target, samples)
    if cached is not None:
        return cached
    if target.exists():
        shutil.rmtree(target, ignore_errors=True)  # torn or foreign: rebuild
    images, kept, failures = _decode_all(paths, size, fit, workers, progress)
    base.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=base))
    try:
        np.save(staging / "images.npy", images)
        index = {
            "format": CACHE_FORMAT, "size": size, "fit": fit, "count": len(kept),
            "bytes": (staging / "images.npy").stat().st_size,
            "paths": kept,
            "failures": [{"path": p, "reason": r} for p, r in failures],
        }
        (staging / "index.json").write_text(json.dumps(index))
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    loaded = _load(target, samples)
    if loaded is None:
        raise OSError(f"{target}: the cache just written cannot be read back")
    loaded.reused = False
    return loaded


def _decode_one(job: tuple[str, int, str]) -> np.ndarray | str:
    path, size, fit = job
    try:
        return read_image(path, size, fit)  # type: ignore[arg-type]
    except ImageReadError as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001 - a bug in a decoder must not kill a build of 5,000 files
        return f"{path}: unexpected decoding error ({type(exc).__name__}: {exc})"


def _decode_all(paths: list[str], size: int, fit: str, workers: int | None, progress: bool):
    from tqdm.auto import tqdm

    jobs = [(path, size, fit) for path in paths]
    workers = workers or min(os.cpu_count() or 1, 8)
    images = np.empty((len(paths), size, size), dtype=np.uint8)
    kept_rows: list[int] = []
    failures: list[tuple[str, str]] = []
    bar = tqdm(total=len(jobs), desc=f"caching {size}px", unit="img", disable=not progress, leave=False)

    def collect(i: int, result: np.ndarray | str) -> None:
        if isinstance(result, str):
            failures.append((jobs[i][0], result))
        else:
            images[len(kept_rows)] = result
            kept_rows.append(i)
        bar.update()

    if workers <= 1 or len(jobs) < 64:
        for i, job in enumerate(jobs):
            collect(i, _decode_one(job))
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for i, result in enumerate(pool.map(_decode_one, jobs, chunksize=64)):
                collect(i, result)
    bar.close()
    return images[: len(kept_rows)].copy(), [paths[i] for i in kept_rows], failures


def _load(folder: Path, samples: list[Sample]) -> ImageCache | None:
    index_path, array_path = folder / "index.json", folder / "images.npy"
    try:
        index = json.loads(index_path.read_text())
        if index.get("format") != CACHE_FORMAT or array_path.stat().st_size != index["bytes"]:
            return None
        images = np.load(array_path, mmap_mode="r")
        if images.shape != (index["count"], index["size"], index["size"]):
            return None
    except (OSError, ValueError, KeyError, json.JSONDecodeError):
        return None
    row_of = {path: row for row, path in enumerate(index["paths"])}
    kept = [s for s in samples if os.path.abspath(s.path) in row_of]
    rows = np.array([row_of[os.path.abspath(s.path)] for s in kept], dtype=np.int64)
    failures = [(f["path"], f["reason"]) for f in index["failures"]]
    return ImageCache(folder, images, kept, rows, failures, index["size"], index["fit"], reused=True)
