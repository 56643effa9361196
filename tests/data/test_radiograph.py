"""read_radiograph: an image that decodes but cannot be a chest radiograph (blank, a colour picture, a few
grey levels, near-flat) is refused with the file's name, from one decoding, by every entry point alike and
whatever the scope check; pixels given as an array get the same verdict."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from helpers.properties import examples
from helpers.synthetic import write_synthetic_image
from pneumoscan.data import radiograph
from pneumoscan.data.radiograph import check_radiograph_pixels, pixel_problem, read_radiograph
from pneumoscan.errors import ImageReadError


def grey_radiograph(tmp_path) -> np.ndarray:
    return np.asarray(Image.open(write_synthetic_image(tmp_path / "chest.png", 1, seed=0, size=96)).convert("L"))


def colour_picture(grey: np.ndarray) -> np.ndarray:
    """A radiograph's structure in strongly different red, green and blue channels: a photograph's colours."""
    return np.stack([grey, np.roll(grey, 30, axis=1), 255 - grey], -1)


@pytest.mark.parametrize("name, mode", [("photo.jpeg", "RGB"), ("photo.png", "RGB"), ("photo.png", "RGBA"),
                                        ("photo.png", "P"), ("photo.tiff", "CMYK")])
def test_a_colour_picture_is_refused_naming_the_file_in_every_colour_mode(tmp_path, name, mode):
    path = tmp_path / name
    Image.fromarray(colour_picture(grey_radiograph(tmp_path)), "RGB").convert(mode).save(path)
    with pytest.raises(ImageReadError, match=rf"^{re.escape(str(path))}: a colour picture \(mean channel difference \d+/255\), not a "
                                             "grayscale chest radiograph$"):
        read_radiograph(path, 64)
    with pytest.raises(ImageReadError, match="a colour picture"):
        read_radiograph(path.read_bytes(), 64)  # an upload: the same verdict


@pytest.mark.parametrize("name", ["grey-as-rgb.jpeg", "grey-as-rgb.png", "grey.png"])
def test_a_grey_radiograph_is_accepted_whether_stored_in_grey_or_in_colour(tmp_path, name):
    grey = grey_radiograph(tmp_path)
    path = tmp_path / name
    Image.fromarray(grey, "L").convert("L" if name == "grey.png" else "RGB").save(path)
    pixels = read_radiograph(path, 64, "stretch")
    assert pixels.shape == (64, 64) and pixels.dtype == np.uint8


def test_a_blank_image_is_refused_in_grey_and_in_colour(tmp_path):
    for mode, colour in (("L", 128), ("RGB", (90, 90, 90))):
        path = tmp_path / f"blank-{mode}.png"
        Image.new(mode, (48, 48), colour).save(path)
        with pytest.raises(ImageReadError, match=rf"^{re.escape(str(path))}: blank image \(all pixels about"):
            read_radiograph(path, 32)


def refused(check, *args) -> bool:
    try:
        check(*args)
    except ImageReadError:
        return True
    return False


def test_a_file_and_its_pixels_given_as_an_array_get_the_same_verdict(tmp_path):
    grey = grey_radiograph(tmp_path)
    for i, (pixels, expected) in enumerate(((colour_picture(grey), True), (np.repeat(grey[..., None], 3, -1), False))):
        path = tmp_path / f"image{i}.png"
        Image.fromarray(pixels, "RGB").save(path)
        as_grey = np.asarray(Image.fromarray(pixels).convert("L"))
        assert refused(read_radiograph, path, 64) is expected
        assert refused(check_radiograph_pixels, pixels, as_grey, "<array>") is expected


def test_a_few_grey_levels_or_a_near_flat_image_is_no_radiograph_and_a_radiograph_like_image_passes(tmp_path):
    dot = np.zeros((64, 64), np.uint8)
    dot[20, 30] = 255
    assert "only 2 grey levels" in pixel_problem(dot)
    assert "grey levels" in pixel_problem(np.random.default_rng(0).integers(0, 3, (64, 64)).astype(np.uint8) * 100)
    flat = np.full((64, 64), 120, np.uint8)
    flat[:8, :8] = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4  # 65 grey levels, 98 % of pixels at one
    assert "near-flat" in pixel_problem(flat)
    assert pixel_problem(grey_radiograph(tmp_path)) is None


def test_a_drawing_is_refused_by_every_entry_point_and_the_scope_check_off_does_not_score_it(tmp_path, exported_run):
    from pneumoscan.inference import load

    dot = np.zeros((64, 64), np.uint8)
    dot[10, 10] = 255
    Image.fromarray(dot).save(tmp_path / "dot.png")
    with pytest.raises(ImageReadError, match="dot.png: only 2 grey levels"):
        read_radiograph(tmp_path / "dot.png", 64)
    for check in (True, False):
        classifier = load(exported_run, scope_check=check)
        row = classifier.predict(str(tmp_path / "dot.png"))[0]
        assert row.probability is None and "only 2 grey levels" in row.error, row.error
        with pytest.raises(ImageReadError, match="only 2 grey levels"):
            classifier.preprocess(dot)  # pixels given as an array: the same verdict


@settings(max_examples=examples(300), deadline=None)
@given(st.integers(1, 60), st.integers(0, 255), st.integers(0, 40), st.integers(0, 2**32 - 1))
def test_the_near_flat_rule_matches_the_median_and_share_it_is_defined_by(size, centre, spread, seed):
    """The rule reads the median and the share of pixels near it from the histogram; it must give what
    np.median and counting give, for odd and even pixel counts, near 0 and 255 too."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(rng.normal(centre, spread + 0.1, (size, size + seed % 2)), 0, 255).astype(np.uint8)
    outliers = int(rng.integers(0, pixels.size // 5 + 1))
    pixels.flat[:outliers] = rng.integers(0, 256, outliers, dtype=np.uint8)
    median = int(np.median(pixels))
    share = float(np.mean(np.abs(pixels.astype(np.int16) - median) <= radiograph.FLAT_LEVELS))
    levels = len(np.unique(pixels))
    problem = pixel_problem(pixels)
    if int(pixels.max()) - int(pixels.min()) < radiograph.MIN_RANGE:
        assert problem.startswith("blank image")
    elif levels < radiograph.MIN_GREY_LEVELS:
        assert "grey levels" in problem
    elif share > radiograph.MAX_FLAT_SHARE:
        assert problem == (f"near-flat: {share:.0%} of the pixels within {radiograph.FLAT_LEVELS} grey levels of "
                           "one value; not a radiograph")
    else:
        assert problem is None
