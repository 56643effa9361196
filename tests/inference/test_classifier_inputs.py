"""The Python API takes what people pass (paths, folders, globs, bytes, PIL images, numpy arrays, torch
tensors, of any size and depth) and gives each image the probability of the same image read from a
file, with both backends; what it cannot interpret it refuses with a message saying what it expects."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import pneumoscan
from pneumoscan.errors import ImageReadError

SIZE = 64
TOLERANCE = 1e-4


@pytest.fixture(scope="module", params=["torch", "onnxruntime"])
def model(request, exported_run):
    """The suite's random mini-resnet (fit "pad"), by both backends."""
    return pneumoscan.load(exported_run / "export" / "model.onnx" if request.param == "onnxruntime" else exported_run)


@pytest.fixture(scope="module")
def pixels(request) -> np.ndarray:
    """A full-resolution, non-square real radiograph (8-bit grey) when the shared data is there, else a
    synthetic non-square one."""
    try:
        root = request.getfixturevalue("shared_data")
    except pytest.skip.Exception:
        root = None
    original = root / "chest_xray_originals" / "NORMAL" / "IM-0214-0001.jpeg" if root else None
    if original is not None and original.is_file():
        return np.asarray(Image.open(original).convert("L"))
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:300, :420] / 300
    img = rng.normal(140, 25, yy.shape) - 70 * np.exp(-(((xx - 0.5) / 0.2) ** 2 + ((yy - 0.5) / 0.3) ** 2))
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def image_file(pixels, tmp_path_factory) -> Path:
    """The pixels as a lossless PNG: the file every other kind of input is compared with."""
    folder = tmp_path_factory.mktemp("inputs-image")
    path = folder / "chest.png"
    Image.fromarray(pixels, "L").save(path, compress_level=1)  # lossless at any level; 1 is the quick one
    return path


@pytest.fixture(scope="module")
def from_file(model, image_file):
    """The model's row for the image read from its file: what every other kind of input must give."""
    return model.predict([image_file])[0]


INPUTS = {
    "str path": lambda f, p: str(f),
    "Path": lambda f, p: f,
    "list of paths": lambda f, p: [f],
    "folder": lambda f, p: f.parent,
    "glob": lambda f, p: str(f.parent / "*.png"),
    "bytes": lambda f, p: f.read_bytes(),
    "list of bytes": lambda f, p: [f.read_bytes()],
    "PIL image": lambda f, p: Image.open(f),
    "list of PIL images": lambda f, p: [Image.open(f)],
    "numpy uint8 (H, W)": lambda f, p: p,
    "numpy uint8 (H, W, 1)": lambda f, p: p[..., None],
    "numpy uint8 (H, W, 3)": lambda f, p: np.repeat(p[..., None], 3, axis=2),
    "numpy uint8 (N, H, W)": lambda f, p: p[None],
    "numpy float (H, W) in [0, 1]": lambda f, p: p.astype(np.float64) / 255,
    "list of numpy arrays": lambda f, p: [p],
    "torch uint8 (H, W)": lambda f, p: torch.from_numpy(p.copy()),
    "torch float (N, 1, H, W)": lambda f, p: torch.from_numpy(p.astype(np.float32) / 255)[None, None],
}


@pytest.mark.parametrize("kind", list(INPUTS))
def test_every_kind_of_input_gets_the_probability_of_the_file(model, image_file, pixels, from_file, kind):
    expected = from_file
    assert expected.error is None, expected.error
    given = INPUTS[kind](image_file, pixels)

    rows = model.predict(given)
    assert len(rows) == 1 and rows[0].error is None, rows
    assert rows[0].probability == pytest.approx(expected.probability, abs=TOLERANCE)
    assert len(rows[0].source) < 300  # a name, never the file's content
    if kind not in ("folder", "glob"):  # predict_proba takes images, not folders to search
        probs = model.predict_proba(given)
        assert probs.shape == (1,)
        assert probs[0] == pytest.approx(expected.probability, abs=TOLERANCE)


def test_uint16_pixels_are_scaled_as_a_16_bit_file_is(model, pixels, tmp_path):
    deep = pixels.astype(np.uint16) * 64 + 100  # a 14-bit detector's range, not starting at 0
    path = tmp_path / "deep.png"
    Image.fromarray(deep).save(path, compress_level=1)  # 16-bit grey PNG (I;16)
    expected = model.predict([path])[0].probability
    assert model.predict_proba(deep)[0] == pytest.approx(expected, abs=TOLERANCE)
    assert model.predict(deep)[0].probability == pytest.approx(expected, abs=TOLERANCE)


def test_a_full_resolution_array_is_fitted_not_scored_as_garbage(model, pixels, from_file):
    """The old API scored a full-size uint8 array as if it were the network's input: a wrong answer."""
    assert pixels.shape != (SIZE, SIZE)
    expected = from_file.probability
    assert model.predict_proba(pixels[None])[0] == pytest.approx(expected, abs=TOLERANCE)


def test_a_single_path_is_one_image_and_bytes_are_named_not_copied(model, image_file):
    assert len(model.predict(str(image_file))) == 1
    rows = model.predict([image_file.read_bytes(), image_file.read_bytes()])
    assert [r.source for r in rows] == ["<bytes 0>", "<bytes 1>"]


def test_a_batch_of_different_images_keeps_their_order(model, pixels):
    flipped = np.ascontiguousarray(pixels[:, ::-1])
    one_by_one = [model.predict_proba(p)[0] for p in (pixels, flipped)]
    together = model.predict_proba([pixels, flipped])
    np.testing.assert_allclose(together, one_by_one, atol=TOLERANCE)


@pytest.mark.parametrize(("bad", "message"), [
    (np.full((100, 120), 1.5), "floats must lie in [0, 1]"),
    (np.zeros((2, 3, 100, 120, 1), np.uint8), "expected one image"),
    (np.zeros((100, 120), bool), "expected uint8"),
    (np.full((100, 120), np.nan), "NaN"),
])
def test_arrays_it_cannot_interpret_are_refused_with_what_is_expected(model, bad, message):
    pattern = message.replace("[", r"\[").replace("]", r"\]")
    with pytest.raises(ImageReadError, match=pattern):
        model.predict_proba(bad)
    if bad.ndim > 4:  # not even a batch: predict cannot tell how many rows to make
        with pytest.raises(ImageReadError, match=pattern):
            model.predict(bad)
    else:  # one image that cannot be scored: its row says why
        row = model.predict(bad)[0]
        assert row.probability is None and message in row.error


def test_repr_says_which_model_how_it_is_fed_and_by_what(model):
    text = repr(model)
    for part in ("mini-resnet", "image_size=64", "fit='pad'", "threshold=0.5000", model.backend.name):
        assert part in text


@pytest.fixture(scope="module")
def large_originals(shared_data) -> list[Path]:
    """A handful of full-resolution JPEG originals, the largest first (8-bit grey and RGB)."""
    files = sorted((shared_data / "chest_xray_originals").glob("*/*.jpeg"))
    if not files:
        pytest.skip("chest_xray_originals/ absent from the real data folder")
    by_size = sorted(files, key=lambda f: -min(Image.open(f).size))
    return by_size[:6] + [f for f in by_size if Image.open(f).mode == "RGB"][:2]


@pytest.mark.parametrize("which", ["bundled", "suite"])
def test_a_full_resolution_jpeg_and_its_own_pixels_get_one_probability(large_originals, model, which):
    """A file and the array of its own pixels go through the same resize: a JPEG is never decoded at a
    reduced scale that the array is not (the bundled model is trained, so the most sensitive to it)."""
    scorer = pneumoscan.load() if which == "bundled" else model
    from_files = np.array([row.probability for row in scorer.predict(large_originals)])
    from_arrays = scorer.predict_proba([np.asarray(Image.open(f)) for f in large_originals])
    np.testing.assert_allclose(from_arrays, from_files, atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("channels", [3, 4])
def test_a_channel_first_colour_image_is_refused_never_scored_as_several_images(model, pixels, channels):
    """(3, H, W) is what ToTensor and MONAI give for one RGB image, and also looks like three grey images."""
    first = np.repeat(pixels[None], channels, axis=0)
    for given in (first, torch.from_numpy(first.astype(np.float32) / 255)):
        for call in (model.predict, model.predict_proba):
            with pytest.raises(ImageReadError, match=r"one image .*\(H, W, C\).*several grey images"):
                call(given)
    # Said unambiguously, it is one image with the file's probability.
    expected = model.predict_proba(np.moveaxis(first, 0, -1))
    assert expected.shape == (1,)
    assert model.predict_proba(first[None])[0] == pytest.approx(expected[0], abs=TOLERANCE)
    if channels == 3:  # grey repeated in R, G and B is the grey image
        assert expected[0] == pytest.approx(model.predict_proba(pixels)[0], abs=TOLERANCE)


def test_a_channel_first_grey_image_is_one_image(model, pixels, from_file):
    for given in (pixels[None], torch.from_numpy(pixels.astype(np.float32) / 255)[None]):
        rows = model.predict(given)
        assert len(rows) == 1 and rows[0].probability == pytest.approx(from_file.probability, abs=TOLERANCE)
        assert model.predict_proba(given).shape == (1,)


def test_the_python_api_never_draws_a_progress_bar(model, image_file, capfd):
    assert len(model.predict([image_file] * 60)) == 60
    assert len(model.predict([image_file.read_bytes()] * 60)) == 60
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == "", captured
