"""Explanations as every entry point makes them: never empty on real pneumonia, predict's probability and scope
gate, a notice on an empty map, the image's own aspect, and a memory that does not grow with calls."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from pneumoscan.explain import Heatmaps, explain_images, explanation_picture, is_flat, target_layer
from pneumoscan.inference import Classifier, load
from pneumoscan.inference.scope import OUT_OF_SCOPE
from pneumoscan.inference.torch_backend import TorchBackend
from pneumoscan.models import ModelMeta, build_model, save_model

# Real PNEUMONIA test images whose Grad-CAM on the last feature map (before its ReLU6) was all zero.
EMPTY_BEFORE = ("person100_bacteria_475.jpeg", "person103_bacteria_488.jpeg", "person108_bacteria_504.jpeg",
                "person111_bacteria_534.jpeg", "person117_bacteria_557.jpeg")


@pytest.fixture(scope="module")
def bundled() -> Classifier:
    return load(None, prefer_onnx=True)  # what `pneumoscan predict` and `explain` load


def _test_images(shared_data, names) -> list[str]:
    return [str(shared_data / "chest_xray" / "test" / "PNEUMONIA" / name) for name in names]


def _notice_pixels(rgb: np.ndarray) -> int:
    """Pure yellow pixels: the notice's text (the heatmap's colours are always blended with the grey image)."""
    rgb = np.asarray(rgb, dtype=np.int16)
    return int(((rgb[..., 0] > 200) & (rgb[..., 1] > 200) & (rgb[..., 2] < 60)).sum())


def test_no_heatmap_of_the_bundled_model_is_empty_on_real_pneumonia_images(shared_data, bundled):
    files = _test_images(shared_data, EMPTY_BEFORE)
    images = np.stack([bundled.preprocess(f) for f in files])
    maps = Heatmaps.of(bundled)
    heat = maps(images)
    assert [f for f, h in zip(files, heat, strict=True) if is_flat(h)] == []
    # Finer than the last 4 x 4 map: the default layer's map is 8 x 8 at 128 px.
    assert maps.layer == target_layer(bundled.torch_module().network, 128, 16) == "network._blocks.10"


def test_explain_shows_the_probability_predict_gives(shared_data, bundled, tmp_path):
    files = _test_images(shared_data, EMPTY_BEFORE[:2])
    result = explain_images(None, files, tmp_path)
    assert [row.probability for row in result.predictions] == [row.probability for row in bundled.predict(files)]
    assert len(result.written) == 2 and result.failures == []


def test_explain_refuses_what_predict_refuses_with_the_same_reason(shared_data, bundled, tmp_path):
    radiograph = np.asarray(Image.open(_test_images(shared_data, EMPTY_BEFORE[:1])[0]).convert("L"))
    rotated, drawing = str(tmp_path / "rotated.png"), str(tmp_path / "drawing.png")
    Image.fromarray(np.ascontiguousarray(np.rot90(radiograph))).save(rotated)
    Image.fromarray((radiograph // 64 * 64).astype(np.uint8)).save(drawing)  # four grey levels
    rows = bundled.predict([rotated, drawing])
    assert all(row.probability is None and OUT_OF_SCOPE in row.error for row in rows), rows

    result = explain_images(None, [rotated, drawing], tmp_path / "out")

    assert result.written == [] and result.failures == [(row.source, row.error) for row in rows]


class NothingBright(torch.nn.Module):
    """A network that sees only pixels brighter than half-scale: on a dark image its map is empty."""

    def __init__(self) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU())
        self.head = torch.nn.Sequential(torch.nn.AdaptiveMaxPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 1))
        with torch.no_grad():
            self.features[0].weight.fill_(1 / 9)
            self.features[0].bias.fill_(-0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def test_an_empty_map_is_drawn_with_a_notice_in_explain_and_on_the_server(tmp_path):
    from pneumoscan.serving.explainer import Explainer

    dark = np.random.default_rng(0).integers(0, 100, (48, 48), dtype=np.uint8)  # a dim but textured image
    blob = np.zeros((48, 48), np.float32)
    blob[10:20, 10:20] = 1.0
    assert _notice_pixels(explanation_picture(dark, np.zeros((48, 48), np.float32))) > 30
    assert _notice_pixels(explanation_picture(dark, blob)) == 0

    classifier = Classifier(TorchBackend(NothingBright(), "cpu"), ModelMeta(name="seed-cnn", image_size=48, fit="stretch"))
    Image.fromarray(dark).save(tmp_path / "dark.png")
    result = explain_images(classifier, [str(tmp_path / "dark.png")], tmp_path / "out")
    assert _notice_pixels(np.asarray(Image.open(result.written[0]).convert("RGB"))) > 30

    import base64
    import io

    answer = Explainer(classifier).explain(classifier.preprocess(str(tmp_path / "dark.png")))
    overlay = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["overlay_png_base64"]))).convert("RGB"))
    assert answer["method"] == "grad-cam" and _notice_pixels(overlay) > 30


@pytest.mark.parametrize(("width", "height", "fit", "shape"), [
    (300, 200, "stretch", (341, 512)), (200, 400, "pad", (512, 256)), (300, 200, "crop", (512, 512))])
def test_the_picture_is_drawn_at_the_source_images_aspect(width, height, fit, shape):
    gray = np.full((64, 64), 120, np.uint8)
    heat = np.zeros((64, 64), np.float32)
    heat[20:40, 20:40] = 1.0
    picture = explanation_picture(gray, heat, source=(width, height, fit), longest=512)
    assert picture.shape == (*shape, 3)


def test_the_dicom_overlay_keeps_the_instances_aspect(tmp_path):
    import pydicom

    from helpers import chest_dicoms
    from pneumoscan.dicom import Processor

    torch.manual_seed(0)
    run = save_model(tmp_path / "run", build_model("seed-cnn", 32), ModelMeta(name="seed-cnn", image_size=32,
                                                                                fit="stretch", threshold=0.5))
    pixels = np.random.default_rng(1).integers(0, 4096, (200, 300)).astype(np.uint16)  # 300 wide, 200 high
    ds = chest_dicoms.instance(chest_dicoms.study(), chest_dicoms.CR, "CR", 1, pixels, 12, ViewPosition="PA",
                               BodyPartExamined="CHEST")
    outcome = Processor(run, tmp_path / "out", overlay=True).process(ds)
    sc = pydicom.dcmread(outcome.overlay_file)
    assert (sc.Columns, sc.Rows) == (512, 341)


RSS_CHILD = textwrap.dedent("""
    import gc, resource, sys
    import numpy as np
    from pneumoscan.inference import load
    from pneumoscan.serving.explainer import Explainer

    def status(key):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(key)) * 1024

    classifier = load(sys.argv[1])
    explainer = Explainer(classifier)
    image = np.random.default_rng(0).random((1, 64, 64), dtype=np.float32)
    for _ in range(5):
        explainer.explain(image)
    # A cap, should the explanations leak after all: address space now plus 2 GiB.
    resource.setrlimit(resource.RLIMIT_AS, (status("VmSize:") + (2 << 30), resource.RLIM_INFINITY))
    gc.collect()
    start = status("VmRSS:")
    for call in range(200):
        explainer.explain(image)
        grown = status("VmRSS:") - start
        if grown > 50 << 20:
            sys.exit(f"RSS grew by {grown >> 20} MiB after {call + 1} calls")
    print("grew", (status("VmRSS:") - start) >> 20, "MiB")
""")


def test_two_hundred_explanations_in_one_process_keep_its_memory_flat(tmp_path):
    torch.manual_seed(0)
    run = save_model(tmp_path / "run", build_model("efficientnet-lite0", 64),
                     ModelMeta(name="efficientnet-lite0", image_size=64, fit="stretch"))
    done = subprocess.run([sys.executable, "-c", RSS_CHILD, str(run)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
