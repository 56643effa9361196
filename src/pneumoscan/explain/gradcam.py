"""Class-activation heatmaps (MONAI's Grad-CAM family) for any registered model (pictures: :mod:`.picture`).

:class:`Heatmaps` is the one place that sets a network up for them: a private copy of the network, its
hooks registered once, reused for every image (``pneumoscan explain``, the server's ``?explain=true``, the
DICOM overlay hold one each; the evaluation gallery makes one per report). After each call it drops what
the hooks kept (the target layer's activations, their gradients, the score): those tensors hold the
autograd graph, whose hooks point back at the network, a reference cycle through torch's C++ graph that
Python's garbage collector cannot see; kept, every call leaked a network.

The default is Grad-CAM on the last whole block at 1/16 of the input size (:func:`target_layer` with
:data:`FINE_STRIDE`), not on the last feature map: ``bench/bench_explain.py`` measured both, with
Grad-CAM++ and HiResCAM, on the test set (``docs/inference.md``, "How the heatmap is made").
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from pneumoscan.errors import ConfigError

METHODS = {"grad-cam": "Grad-CAM", "grad-cam++": "Grad-CAM++", "hirescam": "HiResCAM"}  # name -> as shown
DEFAULT_METHOD = "grad-cam"
# The finest feature map the default layer may have, as a share of the input's side: 1/16 gives 8 x 8 at
# 128 px (EfficientNet's stage 5), where the last map is 4 x 4.
FINE_STRIDE = 16
# A map whose range (after scaling to [0, 1]) is below this shows nothing: drawn with a notice, never blank.
FLAT = 1e-3


def target_layer(model: nn.Module, image_size: int, stride: int | None = None) -> str:
    """The name of the module the heatmap uses, found by running the model once.

    Without ``stride``: the last module to output a spatial map (N, C, H, W with H, W > 1), i.e. the end of
    the last convolutional stage. With ``stride``: the last module whose map is at least ``image_size /
    stride`` on a side and whose enclosing module gives no smaller map: a block's output, not the expansion
    inside a block that then halves the size. Works for models added to the registry later without a
    per-name table.
    """
    order: list[tuple[str, tuple[int, ...]]] = []
    calls: dict[str, int] = {}
    hooks = []

    def record(name: str):
        def hook(_module, _inputs, output) -> None:
            calls[name] = calls.get(name, 0) + 1
            if isinstance(output, torch.Tensor) and output.ndim == 4 and min(output.shape[2:]) > 1:
                order.append((name, tuple(output.shape[2:])))

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
    smallest = 2 if stride is None else max(2, -(-image_size // stride))
    sizes = dict(order)
    # A module run twice in one pass (a shared ReLU) has ambiguous hooks: skip it for its container.
    candidates = [name for name, shape in reversed(order) if calls[name] == 1 and min(shape) >= smallest]

    def whole(name: str) -> bool:  # its enclosing module gives no smaller map (or none: a list, the logit)
        return "." not in name or min(sizes.get(name.rsplit(".", 1)[0], (smallest,))) >= smallest

    chosen = next((name for name in candidates if stride is None or whole(name)), None) or next(iter(candidates), None)
    if chosen is not None:
        return chosen
    raise ConfigError(f"{type(model).__name__}: no convolutional feature map found for Grad-CAM at {image_size}px")


class Heatmaps:
    """Heatmaps of the PNEUMONIA logit for one network: ``heatmaps(images) -> (N, S, S)`` in [0, 1].

    Works on its own copy of ``model`` (``copy_model=False``: on ``model`` itself, which then keeps the hooks
    and must not be used elsewhere), so the caller's network is never modified. Safe to call from several
    threads (one call at a time), and holds nothing between calls but the copy.
    """

    def __init__(self, model: nn.Module, image_size: int, *, layer: str | None = None,
                 method: str = DEFAULT_METHOD, copy_model: bool = True) -> None:
        if method not in METHODS:
            raise ConfigError(f"unknown heatmap method {method!r}; choose one of {', '.join(METHODS)}")
        work = (copy.deepcopy(model) if copy_model else model).cpu().eval()
        for module in work.modules():
            if getattr(module, "inplace", False):
                module.inplace = False  # in-place ops break the backward hooks the maps rely on
        # Gradients flow from the input (which requires them), not into the weights: none kept per call.
        work.requires_grad_(False)
        self.layer = layer or target_layer(work, int(image_size), FINE_STRIDE)
        if self.layer not in dict(work.named_modules()):
            raise ConfigError(f"no layer {self.layer!r} in {type(model).__name__}; "
                              "see 'pneumoscan explain --list-layers'")
        self.method = method
        self._cam = _monai_cam(method)(nn_module=work, target_layers=self.layer, postprocessing=lambda x: x)
        self._lock = threading.Lock()

    @classmethod
    def of(cls, classifier, *, layer: str | None = None, method: str = DEFAULT_METHOD) -> Heatmaps:
        """The heatmaps of a :class:`~pneumoscan.inference.Classifier`'s model, on its PyTorch network
        (:meth:`~pneumoscan.inference.Classifier.torch_module`, a copy; for an ONNX model, the weights
        beside it, checked to be the same model): the one set-up every entry point uses."""
        return cls(classifier.torch_module().network, classifier.image_size, layer=layer, method=method,
                   copy_model=False)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Maps of ``images``, (N, S, S) uint8 or (N, 1, S, S) float32 in [0, 1] (the model's input),
        upsampled to the input size: float32 (N, S, S) in [0, 1], each divided by its own maximum. 1 is the
        strongest evidence for pneumonia in that image; a map that is all 0 (:func:`is_flat`) found none."""
        hooks = self._cam.nn_module
        with self._lock, torch.inference_mode(False), torch.enable_grad():
            batch = _as_batch(images)  # made here: a tensor made under inference_mode cannot require grad
            try:
                # One image at a time: MONAI's Grad-CAM++ weighs a batch's gradients by one score only.
                # An input that requires grad keeps the backward hooks on module inputs well-defined.
                maps = np.concatenate([self._cam(x=one[None].requires_grad_(True), class_idx=0).detach()[:, 0].numpy()
                                       for one in batch]) if len(batch) else np.zeros((0, *batch.shape[2:]))
            finally:  # what the hooks kept holds the graph, and the graph the hooks: drop it (see above)
                hooks.activations.clear()
                hooks.gradients.clear()
                hooks.score = None
        maps = np.nan_to_num(maps.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        peak = maps.reshape(len(maps), -1).max(axis=1).reshape(-1, 1, 1)
        return np.where(peak > 0, maps / np.maximum(peak, 1e-12), 0.0).astype(np.float32)


def gradcam(model: nn.Module, images: np.ndarray, layer: str | None = None,
            method: str = DEFAULT_METHOD) -> np.ndarray:
    """Heatmaps of ``images`` for ``model``, once (see :class:`Heatmaps`; hold one to explain many)."""
    return Heatmaps(model, _as_batch(images).shape[-1], layer=layer, method=method)(images)


def is_flat(heatmap: np.ndarray) -> bool:
    """Whether a heatmap in [0, 1] shows nothing (no positive evidence anywhere, or the same everywhere)."""
    heat = np.asarray(heatmap, dtype=np.float32)
    return heat.size == 0 or float(heat.max() - heat.min()) < FLAT


def _monai_cam(method: str) -> Callable:
    """MONAI's class for ``method``; HiResCAM (Draelos and Carin, 2020) is Grad-CAM without the spatial
    average of the gradients: each location's activations times their own gradients, which sum exactly
    to the logit's first-order change, so the map shows where the score comes from."""
    from monai.visualize import GradCAM, GradCAMpp

    if method == "grad-cam":
        return GradCAM
    if method == "grad-cam++":
        return GradCAMpp

    class HiResCAM(GradCAM):
        def compute_map(self, x, class_idx=None, retain_graph=False, layer_idx=-1, **kwargs):
            _, acti, grad = self.nn_module(x, class_idx=class_idx, retain_graph=retain_graph, **kwargs)
            return torch.relu((acti[layer_idx] * grad[layer_idx]).sum(1, keepdim=True))

    return HiResCAM


def _as_batch(images: np.ndarray) -> torch.Tensor:
    array = np.asarray(images)
    if array.dtype == np.uint8:
        array = array.astype(np.float32) / 255.0
    if array.ndim == 2:
        array = array[None]
    if array.ndim == 3:
        array = array[:, None]
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
