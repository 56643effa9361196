"""Explanations: Grad-CAM heatmaps (MONAI), the first layer's filters and feature maps of chosen layers.

>>> from pneumoscan.explain import gradcam, overlay
>>> heat = gradcam(model, images)          # (N, S, S) in [0, 1]: evidence for PNEUMONIA
>>> rgb = overlay(images[0], heat[0])      # RGB uint8, heatmap over the radiograph

Heatmaps show where the network's evidence is, not where the disease is; NOT for diagnosis.
"""

from pneumoscan.explain.filters import conv_layers, feature_maps, first_layer_filters
from pneumoscan.explain.gradcam import gradcam, overlay, target_layer
from pneumoscan.explain.run import ExplainResult, explain_images

__all__ = [
    "ExplainResult", "conv_layers", "explain_images", "feature_maps", "first_layer_filters", "gradcam",
    "overlay", "target_layer",
]
