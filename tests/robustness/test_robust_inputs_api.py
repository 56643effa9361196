"""The corpus of bad inputs through the Python API: decoding, listing, caching, prediction.

Every bad file is refused with an ImageReadError whose one-line message names the file and the reason;
the odd-but-valid files decode to the right picture; good files beside the bad ones are all processed.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from helpers.corpus import (
    BAD_CASES,
    CASES,
    DATASET_CASES,
    ODD_GOOD_CASES,
    Case,
    header_only_png,
    make_corpus,
    make_dataset,
    reference_pixels,
    tiny_model,
)
from pneumoscan.data import build_cache, load_dataset, probe_image, read_image
from pneumoscan.errors import DatasetError, ImageReadError


@pytest.fixture(scope="module")
def corpus_files(tmp_path_factory) -> dict[str, Path]:
    return make_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def corpus_dataset(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    root = tmp_path_factory.mktemp("corpus-dataset")
    return root, make_dataset(root)


def _assert_names_file(message: str, path: Path, case: Case | None) -> None:
    assert str(path) in message, f"message does not name the file: {message!r}"
    assert case is None or case.says(message), f"message does not say {case.reason!r}: {message!r}"
    assert "\n" not in message and "Traceback" not in message


@pytest.mark.parametrize("case", BAD_CASES, ids=lambda c: c.name)
def test_read_image_refuses_each_bad_file_with_a_message_naming_it(case: Case, corpus_files) -> None:
    path = corpus_files[case.name]
    with pytest.raises(ImageReadError) as info:
        read_image(path, 32)
    _assert_names_file(str(info.value), path, case)


@pytest.mark.parametrize("case", ODD_GOOD_CASES, ids=lambda c: c.name)
def test_read_image_decodes_each_unusual_but_valid_file_to_the_right_picture(case: Case, corpus_files) -> None:
    pixels = read_image(corpus_files[case.name])
    assert pixels.dtype == np.uint8 and pixels.ndim == 2
    if case.name == "one_pixel":
        assert pixels.shape == (1, 1) and pixels[0, 0] == 200
        assert read_image(corpus_files[case.name], 32).shape == (32, 32)
        return
    reference = reference_pixels().astype(np.float32)
    got = pixels.astype(np.float32)
    if case.name == "rgba":
        # The transparent left quarter is composited onto black; the rest is the picture.
        quarter = reference.shape[1] // 4
        assert got[:, :quarter].max() == 0
        got, reference = got[:, quarter:], reference[:, quarter:]
    # Same orientation and not inverted (MONOCHROME1 shows bone bright): a flip, a transpose, an inversion
    # or a 16-bit image read as its low byte all break the correlation. 12/16-bit images are rescaled
    # to their own range, so the contrast may differ; the picture may not.
    assert got.shape == reference.shape
    correlation = np.corrcoef(got.ravel(), reference.ravel())[0, 1]
    assert correlation > 0.98, f"{case.name}: decoded picture differs from the original (r={correlation:.3f})"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_probe_image_answers_or_raises_only_image_read_error(case: Case, corpus_files) -> None:
    path = corpus_files[case.name]
    try:
        info = probe_image(path)
    except ImageReadError as exc:
        _assert_names_file(str(exc), path, None)
        assert not case.decodable, f"{case.name}: a valid file was refused by the header probe: {exc}"
    else:
        # A header can look fine on a file that fails to decode (truncated, no pixel data); a valid file
        # must show its real size.
        if case.decodable:
            assert info.width > 0 and info.height > 0


def test_bytes_of_a_header_only_bomb_are_refused_without_allocating_it() -> None:
    # 2**31 x 2**31 pixels would need 4 EiB: only a refusal based on the header can answer in time.
    with pytest.raises(ImageReadError, match="decompression bomb"):
        read_image(header_only_png(2**31 - 1, 2**31 - 1), 32, name="upload.png")


def test_listing_a_dataset_with_the_corpus_and_a_directory_loop_terminates_and_keeps_every_file(
    corpus_dataset,
) -> None:
    root, paths = corpus_dataset
    index = load_dataset(root)
    listed = {os.path.abspath(s.path) for s in index.samples}
    goods = [p for name, p in paths.items() if name.startswith("good:")]
    assert {os.path.abspath(p) for p in goods} <= listed
    # Bad files are listed (they are reported later, by whoever decodes them), never silently dropped here.
    for case in CASES:
        if case.listed:
            assert os.path.abspath(paths[case.name]) in listed, f"{case.name} not listed"
    # The directory loop is not followed: every file is listed once.
    assert len(index.samples) == len(listed)


def test_cache_skips_and_reports_every_bad_file_and_keeps_every_good_one(corpus_dataset, tmp_path) -> None:
    root, paths = corpus_dataset
    index = load_dataset(root)
    cache = build_cache(index.samples, size=32, folder=tmp_path / "cache", workers=1, progress=False)
    failed = {os.path.abspath(p): reason for p, reason in cache.failures}
    for case in (c for c in BAD_CASES if c.listed):
        path = os.path.abspath(paths[case.name])
        assert path in failed, f"{case.name} not reported"
        assert case.says(failed[path]) and str(paths[case.name]) in failed[path]
    cached = {os.path.abspath(s.path) for s in cache.samples}
    good = [p for name, p in paths.items() if name.startswith("good:")] + [paths[c.name] for c in ODD_GOOD_CASES]
    assert cached == {os.path.abspath(p) for p in good}
    images, samples = cache.subset(None)
    assert images.shape == (len(good), 32, 32) and images.dtype == np.uint8


@pytest.mark.parametrize("case", list(DATASET_CASES), ids=str)
def test_load_dataset_refuses_a_broken_dataset_with_a_message_naming_it(case: str, tmp_path) -> None:
    what, make, words = DATASET_CASES[case]
    target = make(tmp_path)
    with pytest.raises(DatasetError) as info:
        load_dataset(target)
    message = str(info.value)
    assert words in message.lower() and "\n" not in message
    assert str(target) in message or str(target.name) in message


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("model"))


def test_classifier_predict_reports_bad_files_on_their_row_and_scores_the_rest(corpus_files, tiny_model_dir) -> None:
    import pneumoscan.inference

    classifier = pneumoscan.inference.load(tiny_model_dir)
    cases = [c for c in CASES if c.listed]  # a folder named .png is searched, as a folder, for images
    rows = classifier.predict([corpus_files[c.name] for c in cases], batch_size=4)
    assert [r.source for r in rows] == [str(corpus_files[c.name]) for c in cases]
    for case, row in zip(cases, rows, strict=True):
        if case.blank:  # a one-colour picture is no radiograph: refused rather than scored
            assert row.probability is None and "blank" in row.error.lower(), case.name
        elif case.decodable:
            assert row.error is None and 0.0 <= row.probability <= 1.0, case.name
        else:
            assert row.probability is None and case.says(row.error), case.name


def test_the_documented_tables_are_the_ones_the_corpus_prints() -> None:
    """docs/robustness.md shows what these tests assert: regenerate its tables with
    `PYTHONPATH=tests python -m helpers.corpus` when a case or an outcome changes."""
    from helpers.corpus import docs_table

    text = (Path(__file__).resolve().parents[2] / "docs" / "robustness.md").read_text(encoding="utf-8")
    for table in docs_table().split("\n\n"):
        assert table in text, "docs/robustness.md is out of date: run PYTHONPATH=tests python -m helpers.corpus"
