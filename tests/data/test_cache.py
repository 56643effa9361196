"""build_cache: same pixels as read_image, reused while files are unchanged, rebuilt when they change,
bad files skipped and listed, a torn cache rebuilt."""

from __future__ import annotations

import os

import numpy as np

from helpers.images import save, truncated_jpeg
from pneumoscan.data import build_cache, load_dataset, read_image


def test_cache_holds_exactly_what_read_image_returns_in_sample_order(tmp_path, synthetic_dataset):
    samples = load_dataset(synthetic_dataset).samples
    cache = build_cache(samples, 32, "pad", folder=tmp_path / "c", progress=False)
    assert not cache.reused and cache.images.dtype == np.uint8 and cache.images.shape[1:] == (32, 32)
    images, kept = cache.subset(None)
    assert kept == samples
    for i in (0, 7, len(samples) - 1):
        assert np.array_equal(images[i], read_image(samples[i].path, 32, "pad"))
    assert list(cache.labels()) == [s.label for s in samples]


def test_cache_is_reused_while_files_are_unchanged_and_rebuilt_when_one_changes(tmp_path, synthetic_dataset):
    samples = load_dataset(synthetic_dataset).samples
    first = build_cache(samples, 32, folder=tmp_path / "c", progress=False)
    again = build_cache(samples, 32, folder=tmp_path / "c", progress=False)
    assert again.reused and again.folder == first.folder
    changed = samples[3].path
    from PIL import Image

    Image.fromarray(np.full((64, 64), 255, np.uint8)).save(changed)
    os.utime(changed, ns=(1, 1))  # a different mtime, even on a coarse clock
    rebuilt = build_cache(samples, 32, folder=tmp_path / "c", progress=False)
    assert not rebuilt.reused and rebuilt.folder != first.folder
    assert not first.folder.exists()  # the stale cache of the same files is removed
    other_size = build_cache(samples, 24, folder=tmp_path / "c", progress=False)
    assert rebuilt.folder.exists() and other_size.folder.exists()
    images, _ = rebuilt.subset(None)
    assert images[3].min() == 255


def test_cache_skips_and_lists_undecodable_files(tmp_path, synthetic_dataset):
    truncated_jpeg(synthetic_dataset / "train" / "NORMAL" / "IM-0099-0001.jpeg")
    (synthetic_dataset / "train" / "PNEUMONIA" / "person1_virus_1.png").write_bytes(b"")
    samples = load_dataset(synthetic_dataset).samples
    cache = build_cache(samples, 32, folder=tmp_path / "c", progress=False)
    assert len(cache.samples) == len(samples) - 2
    reasons = dict(cache.failures)
    assert len(reasons) == 2
    assert any("truncated" in r for r in reasons.values()) and any("empty file" in r for r in reasons.values())
    assert build_cache(samples, 32, folder=tmp_path / "c", progress=False).failures == cache.failures


def test_cache_without_its_index_is_rebuilt(tmp_path, synthetic_dataset):
    samples = load_dataset(synthetic_dataset).samples
    first = build_cache(samples, 32, folder=tmp_path / "c", progress=False)
    (first.folder / "index.json").unlink()  # as if killed before the index was written
    again = build_cache(samples, 32, folder=tmp_path / "c", progress=False)
    assert not again.reused and len(again.samples) == len(samples)


def test_parallel_build_equals_serial_build(tmp_path):
    # 70 files: above the threshold under which decoding stays in this process.
    for i in range(70):
        save(tmp_path / "d" / ("NORMAL", "PNEUMONIA")[i % 2] / f"{i}.png",
             np.random.default_rng(i).integers(0, 255, (40, 30), dtype=np.uint8))
    samples = load_dataset(tmp_path / "d").samples
    serial = build_cache(samples, 24, "crop", folder=tmp_path / "a", workers=1, progress=False)
    parallel = build_cache(samples, 24, "crop", folder=tmp_path / "b", workers=2, progress=False)
    assert len(serial.samples) == 70 and np.array_equal(serial.subset(None)[0], parallel.subset(None)[0])
