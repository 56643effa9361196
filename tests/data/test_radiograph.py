"""read_radiograph: an image that decodes but cannot be a chest radiograph (blank, a colour picture) is
refused with the file's name, from one decoding; pixels given as an array get the same verdict."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from helpers.synthetic import write_synthetic_image
from pneumoscan.data.radiograph import check_radiograph_pixels, read_radiograph
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
