"""Grad-CAM for the server: a PyTorch copy of the served model, loaded on the first ``?explain=true``.

Predictions stay on the fast backend (ONNX Runtime); only explanations need torch (and MONAI for
Grad-CAM), so they are imported when first asked for, never at start-up. The heatmap itself is
:func:`pneumoscan.explain.gradcam`, the same as ``pneumoscan explain``; the network is the classifier's own
(:meth:`~pneumoscan.inference.Classifier.torch_module`: ``model.safetensors`` beside the ONNX file or in its
run folder, checked to be the same model).
"""

from __future__ import annotations

import base64
import io
import threading

import numpy as np
from PIL import Image

from pneumoscan.inference import Classifier


class ExplainUnavailable(Exception):
    """This server cannot explain: no PyTorch weights for the served model."""


class Explainer:
    """Computes Grad-CAM overlays for preprocessed images of the served model."""

    def __init__(self, classifier: Classifier) -> None:
        self.classifier = classifier
        self._model = None
        self._layer: str | None = None
        self._lock = threading.Lock()  # one Grad-CAM at a time: each holds a copy of the network

    unavailable_reason = ("explain=true needs the PyTorch weights (model.safetensors) beside the ONNX model or "
                          "in its run folder; serve the run folder, or ask without explain")

    @property
    def available(self) -> bool:
        return self.classifier.explainable

    def explain(self, image: np.ndarray) -> dict[str, str]:
        """Grad-CAM of one preprocessed image, float32 (1, S, S) in [0, 1].

        Returns PNGs, base64-encoded: ``overlay`` (heatmap over the image) and ``image`` (the image as the
        model sees it), both S x S. Raises :class:`ExplainUnavailable` when there are no torch weights.
        """
        if not self.available:
            raise ExplainUnavailable(self.unavailable_reason)
        try:
            from pneumoscan.explain import gradcam, overlay, target_layer
        except ImportError as exc:  # an installation without the explain stage's dependencies
            raise ExplainUnavailable(f"Grad-CAM is not available in this installation ({exc})") from None
        batch = np.asarray(image, dtype=np.float32).reshape(1, 1, *image.shape[-2:])
        with self._lock:
            model = self._network()
            if self._layer is None:  # found by running the network once: do it once
                self._layer = target_layer(model, batch.shape[-1])
            heatmap = gradcam(model, batch, layer=self._layer)[0]
        gray = np.clip(batch[0, 0] * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return {"method": "grad-cam", "overlay_png_base64": _png_base64(overlay(gray, heatmap)),
                "image_png_base64": _png_base64(gray)}

    def _network(self):
        if self._model is None:  # a copy: predictions may run on the torch backend's network at the same time
            self._model = self.classifier.torch_module().network.cpu().eval()
        return self._model


def _png_base64(image: np.ndarray | Image.Image) -> str:
    if not isinstance(image, Image.Image):
        image = Image.fromarray(np.asarray(image))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")
