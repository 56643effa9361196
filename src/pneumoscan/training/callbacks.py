"""Lightning plug-ins that make training keep the project's rules."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from pneumoscan._io import atomic_write


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written through ``_io.atomic_write``: a kill mid-save leaves the previous file intact."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))


def _ema_update(decay: float, ema_param: torch.Tensor, current_param: torch.Tensor, num_averaged: Any) -> torch.Tensor:
    return decay * ema_param + (1 - decay) * current_param


def weight_ema(decay: float):
    """Lightning's weight averaging with an exponential moving average of the weights.

    Lightning's own ``EMAWeightAveraging`` keeps torch's closure as its averaging function, which cannot
    be pickled, so ``ddp_spawn`` could not start; a module-level function bound with ``partial`` can.
    """
    from functools import partial

    from lightning.pytorch.callbacks import WeightAveraging

    return WeightAveraging(avg_fn=partial(_ema_update, decay))
