"""Eager PyTorch behind a :class:`~pneumoscan.inference.classifier.Classifier`."""

from __future__ import annotations

import numpy as np

from pneumoscan.errors import ConfigError, reason


class TorchBackend:
    """Eager PyTorch on the best available device."""

    name = "torch"

    def __init__(self, model, device: str | None = None) -> None:
        import torch

        self.torch = torch
        try:
            self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
            self.model = model.to(self.device).eval()
        except (RuntimeError, AssertionError) as exc:  # an unknown device, or CUDA absent from this build
            raise ConfigError(f"--device {device}: not usable here ({reason(exc)}); use cpu") from None

    def logits(self, batch: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            out = self.model(self.torch.from_numpy(batch).to(self.device))
        return out.float().reshape(-1).cpu().numpy()
