"""Explanations: heatmaps (MONAI's Grad-CAM family), the first layer's filters and feature maps of chosen layers.

>>> from pneumoscan.explain import Heatmaps, explanation_picture, gradcam
>>> heat = gradcam(model, images)          # (N, S, S) in [0, 1]: evidence for PNEUMONIA (Grad-CAM)
>>> maps = Heatmaps(model, 128)            # one set-up, reused for many calls (what every entry point holds)
>>> rgb = explanation_picture(images[0], heat[0])  # RGB uint8, heatmap over the radiograph, notice if empty

Heatmaps show where the network's evidence is, not where the disease is; NOT for diagnosis.
"""

from pneumoscan.explain.filters import conv_layers, feature_maps, first_layer_filters
from pneumoscan.explain.gradcam import (
    DEFAULT_METHOD,
    FINE_STRIDE,
    METHODS,
    Heatmaps,
    gradcam,
    is_flat,
    target_layer,
)
from pneumoscan.explain.picture import FLAT_NOTICE, explanation_picture, overlay
from pneumoscan.explain.run import ExplainResult, explain_images

__all__ = [
    "DEFAULT_METHOD", "FINE_STRIDE", "FLAT_NOTICE", "METHODS", "ExplainResult", "Heatmaps", "conv_layers", "explain_images",
    "explanation_picture", "feature_maps", "first_layer_filters", "gradcam", "is_flat", "overlay", "target_layer",
]
