"""The model as users of torch expect it: one ``nn.Module`` with the model's resize and temperature
(:meth:`pneumoscan.inference.Classifier.torch_module`), to hook, fine-tune or put inside another network.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pneumoscan.data.image import fit_geometry


class CalibratedModule(nn.Module):
    """``network`` (whose per-image standardisation is inside it) behind the model's fit and resize, with
    its temperature.

    ``forward(images)``: ``images`` float ``(N, 1, H, W)`` with grey values in [0, 1] (``uint8 / 255``), any
    H and W (all images of a batch the same size); returns the calibrated logits ``(N, 1)`` =
    ``logit / temperature``, so ``torch.sigmoid`` of them is the probability of PNEUMONIA that
    ``Classifier.predict_proba`` gives (:meth:`probabilities` does both). Images already at the model's
    size (``image_size`` x ``image_size``, what ``Classifier.preprocess`` gives) go in unchanged and match
    ``predict_proba`` exactly; other sizes are made square by ``fit`` (pad with black, centre-crop, or
    stretch) and resized bilinearly with antialiasing, close to the decoder's PIL resize but not equal to it.
    The temperature is a buffer (saved with the state dict, never trained).
    """

    def __init__(self, network: nn.Module, image_size: int, fit: str, temperature: float) -> None:
        super().__init__()
        self.network = network
        self.image_size = int(image_size)
        self.fit = fit
        self.register_buffer("temperature", torch.tensor(float(temperature or 1.0)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 1:
            raise ValueError(f"expected a float batch (N, 1, H, W) in [0, 1], not a tensor of shape {tuple(images.shape)}")
        return self.network(self.resize(images.float())) / self.temperature

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """The probability of PNEUMONIA of each image, ``(N, 1)``."""
        return torch.sigmoid(self(images))

    def resize(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` at the model's size, made square by its fit as the decoder does."""
        size = self.image_size
        height, width = images.shape[-2:]
        if (height, width) == (size, size):
            return images
        new_w, new_h, left, top = fit_geometry(width, height, size, self.fit)  # type: ignore[arg-type]
        scaled = _bilinear(images, new_h, new_w)
        if self.fit == "pad":
            return F.pad(scaled, (left, size - new_w - left, top, size - new_h - top), value=0.0)
        if self.fit == "crop":
            return scaled[..., top : top + size, left : left + size]
        return scaled


def _bilinear(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    return F.interpolate(images, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
