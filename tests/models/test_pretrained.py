"""Starting from other weights: three-channel stems adapted, other heads left alone, a clear report."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from monai.networks.nets import resnet18
from safetensors.torch import save_file

from pneumoscan.errors import ConfigError, ModelFileError
from pneumoscan.models import build_model
from pneumoscan.models.pretrained import load_pretrained


@pytest.fixture
def rgb_imagenet_like(tmp_path):
    """A 3-channel, 1000-class ResNet-18 state dict, keys prefixed as a DataParallel save would be."""
    torch.manual_seed(0)
    source = resnet18(spatial_dims=2, n_input_channels=3, num_classes=1000).eval()
    path = tmp_path / "rgb.safetensors"
    save_file({f"module.{k}": v.contiguous() for k, v in source.state_dict().items()}, str(path))
    return source, path


def test_three_channel_stem_is_adapted_so_gray_images_give_the_same_features(rgb_imagenet_like):
    source, path = rgb_imagenet_like
    model = build_model("resnet18", 64)
    report = load_pretrained(model, path, "resnet18")
    assert report.adapted == ["conv1.weight: 3 input channels summed into 1"]
    gray = torch.rand(2, 1, 64, 64)
    net = model.network.eval()
    with torch.no_grad():
        ours = net.bn1(net.conv1(gray))
        theirs = source.bn1(source.conv1(gray.expand(-1, 3, -1, -1)))
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_a_head_of_another_shape_is_reported_and_left_initialised(rgb_imagenet_like):
    _, path = rgb_imagenet_like
    model = build_model("resnet18", 64)
    before = model.network.fc.weight.clone()
    report = load_pretrained(model, path, "resnet18")
    assert [m.split(":")[0] for m in report.mismatched] == ["fc.weight", "fc.bias"]
    assert torch.equal(model.network.fc.weight, before)
    assert len(report.loaded) == len(model.network.state_dict()) - 2
    assert "fc.weight" in report.summary() and "loaded" in report.summary()


def test_a_checkpoint_of_another_architecture_is_a_clear_error(tmp_path):
    other = build_model("seed-cnn", 64)
    path = tmp_path / "seed.pt"
    torch.save(other.state_dict(), path)
    with pytest.raises(ModelFileError, match="another architecture"):
        load_pretrained(build_model("resnet18", 64), path, "resnet18")


def test_a_pickled_object_is_refused_without_running_it(tmp_path):
    path = tmp_path / "pickle.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "obj": ConfigError("x")}, path)
    with pytest.raises(ModelFileError, match="weights-only"):
        load_pretrained(build_model("resnet18", 64), path, "resnet18")


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is not None, reason="torchvision is installed here")
def test_imagenet_without_the_optional_extra_says_how_to_get_it():
    with pytest.raises(ConfigError, match=r"pneumoscan\[imagenet\]"):
        load_pretrained(build_model("resnet18", 64), "imagenet", "resnet18")
