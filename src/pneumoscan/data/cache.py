"""Decode and resize a dataset once into a compact uint8 array that training and evaluation read.

A cache lives in ``<cache_root>/images/<key>/`` with ``images.npy`` (N x S x S, uint8) and
``index.json`` (the files, in the same order, and the files that failed to decode). The key hashes
the size, the fit and each file's path, size and modification time: a changed, added or removed file
means a new cache. Both files are written atomically (``_io``), the index last: a killed build leaves
no index or a complete cache, and a cache whose array does not match its index is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pneumoscan._io import atomic_write, atomic_write_json, remove_stale_temporaries
from pneumoscan.data._parallel import parallel_map
from pneumoscan.data.defaults import cache_root
from pneumoscan.data.image import Fit, read_image
from pneumoscan.data.records import Sample
from pneumoscan.errors import ConfigError, ImageReadError

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
        digest.update(f"\n{path}|{stamp}".encode("utf-8", "surrogateescape"))  # non-UTF-8 file names
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
    if size < 1:
        raise ConfigError(f"--size: must be a positive number of pixels, not {size}")
    base = Path(folder) if folder is not None else cache_root() / "images"
    paths = sorted({os.path.abspath(s.path) for s in samples})
    target = base / cache_key(paths, size, fit)
    for name in ("images.npy", "index.json"):  # a killed build's torn array can be hundreds of MB
        remove_stale_temporaries(target / name)
    cached = _load(target, samples)
    if cached is not None:
        return cached
    images, kept, failures = _decode_all(paths, size, fit, workers, progress)

    def save(tmp: Path) -> None:
        with open(tmp, "wb") as fh:  # a file object: np.save would append ".npy" to a path
            np.save(fh, images)

    atomic_write(target / "images.npy", save)
    files = hashlib.sha256("\n".join(paths).encode("utf-8", "surrogateescape")).hexdigest()[:20]  # non-UTF-8 names
    index = {
        "format": CACHE_FORMAT, "size": size, "fit": fit, "count": len(kept), "files": files,
        "bytes": (target / "images.npy").stat().st_size,
        "paths": kept,
        "failures": [{"path": p, "reason": r} for p, r in failures],
    }
    atomic_write_json(target / "index.json", index)  # last: it is what marks the cache complete
    loaded = _load(target, samples)
    if loaded is None:
        raise OSError(f"{target}: the cache just written cannot be read back")
    loaded.reused = False
    _remove_stale(base, target, files, size, fit)
    return loaded


def _remove_stale(base: Path, current: Path, files: str, size: int, fit: str) -> None:
    """Delete older caches of the same files at the same size and fit: they can never be used again."""
    for folder in base.iterdir():
        if folder == current or not folder.is_dir():
            continue
        try:
            index = json.loads((folder / "index.json").read_text())
        except (OSError, ValueError):
            continue
        if index.get("files") == files and index.get("size") == size and index.get("fit") == fit:
            shutil.rmtree(folder, ignore_errors=True)


def _decode_one(job: tuple[str, int, str]) -> np.ndarray | str:
    path, size, fit = job
    try:
        return read_image(path, size, fit)  # type: ignore[arg-type]
    except ImageReadError as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001 - a bug in a decoder must not kill a build of 5,000 files
        return f"{path}: unexpected decoding error ({type(exc).__name__}: {exc})"


def _decode_all(
    paths: list[str], size: int, fit: str, workers: int | None, progress: bool
) -> tuple[np.ndarray, list[str], list[tuple[str, str]]]:
    images = np.empty((len(paths), size, size), dtype=np.uint8)
    kept: list[str] = []
    failures: list[tuple[str, str]] = []
    jobs = [(path, size, fit) for path in paths]
    results = parallel_map(_decode_one, jobs, workers, progress, desc=f"caching {size}px", chunksize=64)
    for path, result in zip(paths, results, strict=True):
        if isinstance(result, str):
            failures.append((path, result))
        else:
            images[len(kept)] = result
            kept.append(path)
    return images[: len(kept)], kept, failures


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
