"""What the network learned, as pictures: the first layer's filters, and the feature maps of chosen layers."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from pneumoscan.errors import ConfigError


def conv_layers(model: nn.Module) -> list[str]:
    """Names of the model's 2-D convolutions, in definition order (what ``feature_maps`` can show)."""
    return [name for name, module in model.named_modules() if isinstance(module, nn.Conv2d)]


def first_layer_filters(model: nn.Module, cell: int = 24) -> np.ndarray:
    """The first convolution's filters as one grayscale uint8 grid image, one cell per filter.

    Each filter is averaged over its input channels (one for every pneumoscan model), scaled by its own
    range so small and large filters are equally visible, and enlarged to ``cell`` px without smoothing.
    """
    names = conv_layers(model)
    if not names:
        raise ConfigError(f"{type(model).__name__} has no 2-D convolution to show")
    weight = dict(model.named_modules())[names[0]].weight.detach().float().cpu().mean(dim=1).numpy()
    tiles = [np.kron(_scale(w), np.ones((max(1, cell // w.shape[0]), max(1, cell // w.shape[1])))) for w in weight]
    return _grid(tiles)


def feature_maps(model: nn.Module, image: np.ndarray, layers: list[str] | None = None,
                 max_channels: int = 16) -> dict[str, np.ndarray]:
    """Feature maps of ``layers`` for one image (S, S) uint8 or float in [0, 1], as uint8 grid images.

    Default layers: the first convolution and the Grad-CAM target layer (the last spatial map), i.e. what
    the network sees first and last. Shows the ``max_channels`` most active channels of each layer.
    """
    from pneumoscan.explain.gradcam import _as_batch, target_layer

    batch = _as_batch(image)
    modules = dict(model.named_modules())
    if layers is None:
        layers = list(dict.fromkeys([*conv_layers(model)[:1], target_layer(model, batch.shape[-1])]))
    unknown = [name for name in layers if name not in modules or not name]
    if unknown:
        raise ConfigError(f"unknown layer(s) {', '.join(map(repr, unknown))}; "
                          f"convolutions in this model: {', '.join(conv_layers(model)[:12])} ...")
    captured: dict[str, torch.Tensor] = {}
    hooks = [modules[name].register_forward_hook(_keep(captured, name)) for name in layers]
    try:
        with torch.no_grad():
            model.eval()(batch)
    finally:
        for hook in hooks:
            hook.remove()
    result = {}
    for name in layers:
        out = captured.get(name)
        if out is None or out.ndim != 4:
            raise ConfigError(f"layer {name!r} gives no 2-D feature map; choose one of {', '.join(conv_layers(model)[:12])}")
        maps = out[0].float().cpu().numpy()
        strongest = np.argsort(-maps.reshape(len(maps), -1).mean(axis=1))[:max_channels]
        result[name] = _grid([_scale(maps[c]) for c in sorted(strongest)])
    return result


def _keep(store: dict[str, torch.Tensor], name: str):
    def hook(_module, _inputs, output) -> None:
        if isinstance(output, torch.Tensor):
            store[name] = output.detach()

    return hook


def _scale(array: np.ndarray) -> np.ndarray:
    low, high = float(array.min()), float(array.max())
    return (array - low) / (high - low) if high > low else np.zeros_like(array, dtype=np.float64)


def _grid(tiles: list[np.ndarray], gap: int = 2) -> np.ndarray:
    """Tiles of equal shape with values in [0, 1] -> one uint8 image, about square, on a white background."""
    count = len(tiles)
    columns = int(np.ceil(np.sqrt(count)))
    rows = int(np.ceil(count / columns))
    h, w = tiles[0].shape
    canvas = np.ones((rows * (h + gap) + gap, columns * (w + gap) + gap))
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        canvas[gap + r * (h + gap): gap + r * (h + gap) + h, gap + c * (w + gap): gap + c * (w + gap) + w] = tile
    return np.clip(canvas * 255.0 + 0.5, 0, 255).astype(np.uint8)
