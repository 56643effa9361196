"""Grad-CAM (MONAI) for every registered model, overlays, filters and feature maps, and `pneumoscan explain`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from pneumoscan.cli import main
from pneumoscan.errors import ConfigError
from pneumoscan.explain import feature_maps, first_layer_filters, gradcam, overlay, target_layer
from pneumoscan.models import ModelMeta, available_models, build_model, save_model


class BrightSpotDetector(nn.Module):
    """A network whose evidence is known: the logit grows with the brightest region's response."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(4, 1))
        with torch.no_grad():
            self.features[0].weight.fill_(1 / 9)
            self.features[0].bias.fill_(-0.5)  # only pixels brighter than ~0.5 respond
            self.head[2].weight.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _spot(row: int, col: int, size: int = 48) -> np.ndarray:
    image = np.full((size, size), 40, np.uint8)
    image[row:row + 8, col:col + 8] = 230
    return image


@pytest.mark.parametrize("corner", [(4, 4), (36, 36), (4, 36)])
def test_the_heatmap_peaks_where_the_evidence_is(corner):
    heat = gradcam(BrightSpotDetector(), _spot(*corner)[None])[0]
    peak = np.unravel_index(np.argmax(heat), heat.shape)
    assert heat.shape == (48, 48) and heat.max() == pytest.approx(1.0)
    assert all(abs(p - (c + 4)) <= 6 for p, c in zip(peak, corner, strict=True))
    assert heat[48 - corner[0] - 4, 48 - corner[1] - 4] < 0.1  # the opposite side holds no evidence


@pytest.mark.parametrize("name", sorted(available_models()))
def test_every_registered_model_gets_a_heatmap_of_the_input_size_and_is_left_untouched(name):
    torch.manual_seed(0)
    model = build_model(name, 64).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = np.random.default_rng(0).integers(0, 256, (1, 64, 64), dtype=np.uint8)

    heat = gradcam(model, images)

    assert heat.shape == (1, 64, 64) and np.isfinite(heat).all()
    assert heat.min() >= 0.0 and heat.max() <= 1.0
    assert not any(m._forward_hooks or m._backward_hooks for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_the_target_layer_is_the_last_spatial_feature_map():
    assert target_layer(build_model("seed-cnn", 64), 64) == "network.8"  # the third max-pool
    assert target_layer(BrightSpotDetector(), 48) == "features"  # the block whose last output is spatial


def test_overlay_keeps_the_radiograph_where_there_is_no_evidence():
    image = _spot(10, 10)
    heat = np.zeros((24, 24), np.float32)  # a smaller map is resized to the image
    heat[12:, 12:] = 1.0
    rgb = overlay(image, heat)
    assert rgb.shape == (48, 48, 3) and rgb.dtype == np.uint8
    assert (rgb[:16, :16] == image[:16, :16, None]).all()
    assert np.abs(rgb[40:, 40:].astype(int) - image[40:, 40:, None]).max() > 30


def test_first_layer_filters_show_one_cell_per_filter():
    model = build_model("seed-cnn", 64)  # 32 filters of 3x3 -> a 6 x 6 grid of 24 px cells, 2 px gaps
    grid = first_layer_filters(model, cell=24)
    assert grid.shape == (6 * 26 + 2,) * 2 and grid.dtype == np.uint8
    first = grid[2:26, 2:26]
    weights = model.network[0].weight[0, 0].detach().numpy()
    assert np.argmax(first[::8, ::8]) == np.argmax(weights) and np.argmin(first[::8, ::8]) == np.argmin(weights)


def test_feature_maps_of_chosen_layers_and_a_clear_error_for_an_unknown_one():
    model = build_model("seed-cnn", 64)
    image = np.random.default_rng(1).integers(0, 256, (64, 64), dtype=np.uint8)
    maps = feature_maps(model, image, ["network.0", "network.3"], max_channels=16)
    assert list(maps) == ["network.0", "network.3"]
    assert maps["network.0"].shape == (4 * 64 + 2,) * 2  # 16 channels of 62 px in a 4 x 4 grid
    with pytest.raises(ConfigError, match="unknown layer.*'nope'.*network.0"):
        feature_maps(model, image, ["nope"])


def test_cli_explain_writes_a_png_per_readable_image_and_skips_bad_files(tmp_path, capsys):
    torch.manual_seed(0)
    save_model(tmp_path / "run", build_model("seed-cnn", 32), ModelMeta(name="seed-cnn", image_size=32))
    good = tmp_path / "chest.png"
    texture = np.random.default_rng(0).integers(0, 25, (48, 48), dtype=np.uint8)  # a two-level drawing is no radiograph
    Image.fromarray(_spot(10, 20) + texture, "L").save(good)
    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    out = tmp_path / "out"

    code = main(["explain", str(tmp_path / "run"), str(good), str(bad), "--out", str(out), "--filters"])

    assert code == 0
    written = sorted(p.name for p in out.iterdir())
    assert written == ["chest_features_network-0.png", "chest_features_network-8.png", "chest_gradcam.png",
                       "filters.png"]
    assert all(Image.open(out / name).format == "PNG" for name in written)
    assert "notes.txt" in capsys.readouterr().err


def test_explain_finds_the_run_weights_next_to_an_exported_onnx_model(tmp_path):
    from pneumoscan.errors import ModelFileError
    from pneumoscan.inference import resolve_model

    save_model(tmp_path / "run", build_model("seed-cnn", 32), ModelMeta(name="seed-cnn", image_size=32))
    (tmp_path / "run" / "export").mkdir()
    (tmp_path / "run" / "export" / "model.onnx").write_bytes(b"stand-in: never read")
    _, meta = resolve_model(tmp_path / "run" / "export" / "model.onnx").load_network()
    assert meta.name == "seed-cnn"
    (tmp_path / "lonely.onnx").write_bytes(b"x")
    with pytest.raises(ModelFileError, match="lonely.onnx: Grad-CAM needs the PyTorch weights"):
        resolve_model(tmp_path / "lonely.onnx").load_network()
