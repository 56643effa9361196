"""Training: a LightningModule and a LightningDataModule behind one call, ``train(config) -> run folder``.

>>> from pneumoscan.training import TrainConfig, train
>>> run = train(TrainConfig(epochs=2, limit_train_images=500))

No hand-written epoch loop: Lightning runs it (devices, DDP, mixed precision, checkpoints, resume).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pneumoscan.training.config import TrainConfig

if TYPE_CHECKING:
    from pneumoscan.training.run import train


def __getattr__(name: str) -> Any:
    # `train` pulls in torch and Lightning (seconds): imported on first use, so that the CLI, which
    # reads TrainConfig to build `pneumoscan train --help`, starts fast for every other command.
    if name == "train":
        from pneumoscan.training.run import train

        return train
    raise AttributeError(f"module 'pneumoscan.training' has no attribute {name!r}")


__all__ = ["TrainConfig", "train"]
