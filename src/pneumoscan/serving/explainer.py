"""Heatmaps for the server: a PyTorch copy of the served model, loaded on the first ``?explain=true``.

Predictions stay on the fast backend (ONNX Runtime); only explanations need torch (and MONAI for
Grad-CAM), so they are imported when first asked for, never at start-up. The heatmap itself is
:class:`pneumoscan.explain.Heatmaps` and its picture, the same as ``pneumoscan explain`` and the DICOM
overlay; the network is the classifier's own
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
    """Heatmap overlays for preprocessed images of the served model: one :class:`~pneumoscan.explain.Heatmaps`
    for the server's life (one network, its hooks set once), made on the first request."""

    def __init__(self, classifier: Classifier) -> None:
        self.classifier = classifier
        self._maps = None
        self._lock = threading.Lock()  # the first requests may arrive together: one set-up

    unavailable_reason = ("explain=true needs the PyTorch weights (model.safetensors) beside the ONNX model or "
                          "in its run folder; serve the run folder, or ask without explain")

    @property
    def available(self) -> bool:
        return self.classifier.explainable

    def explain(self, image: np.ndarray) -> dict[str, str]:
        """The heatmap of one preprocessed image, float32 (1, S, S) in [0, 1].

        Returns PNGs, base64-encoded: ``overlay`` (heatmap over the image, at least 256 px, with a notice
        written on it when the map is flat) and ``image`` (the image as the model sees it, S x S). Raises
        :class:`ExplainUnavailable` when there are no torch weights.
        """
        if not self.available:
            raise ExplainUnavailable(self.unavailable_reason)
        try:
            from pneumoscan.explain import explanation_picture
        except ImportError as exc:  # an installation without the explain stage's dependencies
            raise ExplainUnavailable(f"Grad-CAM is not available in this installation ({exc})") from None
        batch = np.asarray(image, dtype=np.float32).reshape(1, 1, *image.shape[-2:])
        maps = self._heatmaps()
        heatmap = maps(batch)[0]  # Heatmaps takes one call at a time itself
        gray = np.clip(batch[0, 0] * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return {"method": maps.method, "overlay_png_base64": _png_base64(explanation_picture(gray, heatmap)),
                "image_png_base64": _png_base64(gray)}

    def _heatmaps(self):
        from pneumoscan.explain import Heatmaps

        with self._lock:
            if self._maps is None:  # on a copy: predictions may use the torch backend meanwhile
                self._maps = Heatmaps.of(self.classifier)
            return self._maps


def _png_base64(image: np.ndarray | Image.Image) -> str:
    if not isinstance(image, Image.Image):
        image = Image.fromarray(np.asarray(image))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")
