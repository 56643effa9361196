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
