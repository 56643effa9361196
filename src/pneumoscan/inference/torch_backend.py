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
        return self.scores(batch)[0]

    def scores(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """(logits (N,), the scope gate's output (N, K) or None, the subtype head's viral logits (N,) or None),
        one pass."""
        from pneumoscan.models.subtype_head import model_outputs

        with self.torch.inference_mode():
            logits, scope, viral = model_outputs(self.model, self.torch.from_numpy(batch).to(self.device))
        return (logits.float().reshape(-1).cpu().numpy(),
                None if scope is None else scope.float().reshape(len(batch), -1).cpu().numpy(),
                None if viral is None else viral.float().reshape(-1).cpu().numpy())
