"""Grad-CAM heatmaps (MONAI's implementation) for any registered model, and their overlay on the image.

The target layer is found by running the model once: it is the last module to produce a spatial feature
map (N, C, H, W with H, W > 1), i.e. the output of the last convolutional stage before pooling. That
picks ``class_layers.relu`` in DenseNet-121, ``layer4`` in ResNets and the last conv block of the seed
CNN, and works for models added to the registry later without a per-name table.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from pneumoscan.errors import ConfigError


def target_layer(model: nn.Module, image_size: int) -> str:
    """The name of the module Grad-CAM should use: the last one to output a (N, C, H, W) map, H, W > 1."""
    order: list[str] = []
    calls: dict[str, int] = {}
    hooks = []

    def record(name: str):
        def hook(_module, _inputs, output) -> None:
            calls[name] = calls.get(name, 0) + 1
            if isinstance(output, torch.Tensor) and output.ndim == 4 and min(output.shape[2:]) > 1:
                order.append(name)

        return hook

    for name, module in model.named_modules():
        if name:  # the root's output is the logit
            hooks.append(module.register_forward_hook(record(name)))
    try:
        with torch.no_grad():
            model.eval()(torch.rand(1, 1, image_size, image_size))
    finally:
        for hook in hooks:
            hook.remove()
    # A module run twice in one pass (a shared ReLU) has ambiguous hooks: skip it for its container.
    for name in reversed(order):
        if calls[name] == 1:
            return name
    raise ConfigError(f"{type(model).__name__}: no convolutional feature map found for Grad-CAM at {image_size}px")


def gradcam(model: nn.Module, images: np.ndarray, layer: str | None = None) -> np.ndarray:
    """Grad-CAM maps of the PNEUMONIA logit for ``images``, upsampled to the input size.

    ``images`` is (N, S, S) uint8 or (N, 1, S, S) float32 in [0, 1], the model's input contract. Returns
    float32 (N, S, S) in [0, 1], each map divided by its own maximum: 1 is the strongest evidence for
    pneumonia in that image, 0 none (a map that is all 0 means no positive evidence anywhere).
    The model is not modified: MONAI registers hooks and turns off in-place ops, so it works on a copy.
    """
    from monai.visualize import GradCAM

    batch = _as_batch(images)
    work = copy.deepcopy(model).cpu().eval()
    for module in work.modules():
        if getattr(module, "inplace", False):
            module.inplace = False  # in-place ops break the backward hooks Grad-CAM relies on
    name = layer or target_layer(work, batch.shape[-1])
    if name not in dict(work.named_modules()):
        raise ConfigError(f"no layer {name!r} in {type(model).__name__}; see 'pneumoscan explain --list-layers'")
    cam = GradCAM(nn_module=work, target_layers=name, postprocessing=lambda x: x)
    with torch.inference_mode(False), torch.enable_grad():
        for p in work.parameters():
            p.requires_grad_(True)
        # An input that requires grad keeps the backward hooks on module inputs well-defined.
        maps = cam(x=batch.requires_grad_(True), class_idx=0).detach()[:, 0].numpy().astype(np.float32)
    peak = maps.reshape(len(maps), -1).max(axis=1).reshape(-1, 1, 1)
    return np.where(peak > 0, maps / np.maximum(peak, 1e-12), 0.0).astype(np.float32)


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45, cmap: str = "jet") -> np.ndarray:
    """Blend a heatmap (values in [0, 1]) over a grayscale uint8 image: RGB uint8 of the image's size.

    The colour's weight grows with the heatmap, so regions without evidence show the plain radiograph.
    """
    from matplotlib import colormaps
    from PIL import Image

    gray = np.asarray(image, dtype=np.float32)
    if heatmap.shape != gray.shape:
        resized = Image.fromarray(np.asarray(heatmap, np.float32), mode="F").resize(
            (gray.shape[1], gray.shape[0]), Image.Resampling.BILINEAR)
        heatmap = np.asarray(resized)
    heat = np.clip(np.nan_to_num(heatmap), 0.0, 1.0)
    colour = colormaps[cmap](heat)[..., :3] * 255.0
    weight = (alpha * heat)[..., None]
    blended = gray[..., None] * (1.0 - weight) + colour * weight
    return np.clip(blended + 0.5, 0, 255).astype(np.uint8)


def _as_batch(images: np.ndarray) -> torch.Tensor:
    array = np.asarray(images)
    if array.dtype == np.uint8:
        array = array.astype(np.float32) / 255.0
    if array.ndim == 2:
        array = array[None]
    if array.ndim == 3:
        array = array[:, None]
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
