"""Training: a LightningModule and a LightningDataModule behind one call, ``train(config) -> run folder``.

>>> from pneumoscan.training import TrainConfig, train
>>> run = train(TrainConfig(epochs=2, limit_train_images=500))

No hand-written epoch loop: Lightning runs it (devices, DDP, mixed precision, checkpoints, resume).
"""

from pneumoscan.training.config import TrainConfig
from pneumoscan.training.run import train

__all__ = ["TrainConfig", "train"]
