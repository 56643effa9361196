"""One default for each shared option, a source's own validation split used when it is big enough, and
a warning with the threshold's uncertainty when validation is too small to choose a threshold on.

The training modules (which import Lightning) are imported by the tests that use them: see test_module.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch

from pneumoscan.cli import build_parser
from pneumoscan.training import TrainConfig

if TYPE_CHECKING:
    from pneumoscan.training.data import PreparedData


def _defaults(argv: list[str]):
    return build_parser().parse_args(argv)


def test_shared_options_have_one_default_in_every_command():
    train = TrainConfig()
    split = _defaults(["data", "split"])
    cache = _defaults(["data", "cache"])
    assert split.test_fraction == train.test_fraction
    assert split.val_fraction == train.val_fraction
    assert cache.fit == train.fit


def _npz(path, per_class: dict[str, int], size: int = 28) -> None:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in per_class.items():
        labels = np.array([0, 1] * n, dtype=np.uint8).reshape(-1, 1)
        images = rng.integers(30, 220, (2 * n, size, size), dtype=np.uint8)
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
    np.savez(path, **arrays)


def prepared(config: TrainConfig) -> PreparedData:
    """What a run trains on: the DataModule's hooks, called as Lightning calls them."""
    from pneumoscan.training.data import XrayDataModule

    datamodule = XrayDataModule(config)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule.data


def test_an_npz_with_its_own_validation_split_trains_on_its_splits_by_default(tmp_path):
    npz = tmp_path / "pneumoniamnist.npz"
    _npz(npz, {"train": 20, "val": 50, "test": 5})
    data = prepared(TrainConfig(data=str(npz), image_size=28, progress=False))
    assert len(data.val_samples) == 100 and all(s.split == "val" for s in data.val_samples)
    assert len(data.train_samples) == 40  # its own validation images are not pooled into training

    pooled = prepared(TrainConfig(data=str(npz), image_size=28, split="patient", progress=False))
    assert len(pooled.train_samples) + len(pooled.val_samples) == 140  # asked for: pooled and re-carved


def test_a_tiny_validation_split_warns_with_the_spread_of_its_threshold(capsys):
    from pneumoscan.training.console import warn_if_small_validation

    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    probs = np.array([0.1, 0.3, 0.45, 0.6, 0.4, 0.55, 0.7, 0.9])
    message = warn_if_small_validation(labels, probs, 0.55)
    assert message is not None and "only 4 NORMAL and 4 PNEUMONIA" in message
    assert "ranges from" in message and message in capsys.readouterr().err


def test_a_large_validation_split_does_not_warn():
    from pneumoscan.training.console import warn_if_small_validation

    rng = np.random.default_rng(0)
    labels = np.array([0, 1] * 100)
    assert warn_if_small_validation(labels, rng.random(200), 0.5) is None


@pytest.mark.parametrize("value", ["auto", "patient", "source"])
def test_the_split_option_accepts_its_three_rules(value):
    assert TrainConfig(split=value).split == value


def test_random_crops_are_cut_from_larger_training_images_and_validation_stays_at_the_model_size(real_subset):
    from pneumoscan.models import build_model
    from pneumoscan.training.data import XrayDataModule
    from pneumoscan.training.module import XrayClassifier

    config = TrainConfig(data=str(real_subset), image_size=32, progress=False, channels_last=False)
    assert config.train_image_size == 48  # --crop-source 1.5
    datamodule = XrayDataModule(config)
    datamodule.prepare_data()
    datamodule.setup("fit")
    data = datamodule.data
    assert data.crop_sources.shape == (len(data.train_samples), 48, 48)
    assert data.train_images.shape[1:] == data.val_images.shape[1:] == (32, 32)  # what the scope gate and
    assert datamodule.val_set[0][0].shape == (1, 32, 32)                          # validation see
    big, _ = datamodule.train_set[0]
    assert big.shape == (1, 48, 48)
    # the larger copy holds the same picture: resized to 32 it matches the model-size image closely
    small = torch.nn.functional.interpolate(big[None].float(), size=(32, 32), mode="bilinear", antialias=True)
    assert (small[0, 0] - torch.from_numpy(data.train_images[0]).float()).abs().mean() < 6

    import lightning as L

    module = XrayClassifier(build_model(config.model, config.image_size), config)
    module.trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False)
    module.trainer.training = True
    batch = torch.stack([datamodule.train_set[i][0] for i in range(4)])
    out, _ = module.on_after_batch_transfer((batch, torch.zeros(4)), 0)
    assert out.shape == (4, 1, 32, 32)  # the crop is resized to the model's input


def test_without_crops_training_images_stay_at_the_model_size():
    assert TrainConfig(image_size=32, crop_scale=0.0).train_image_size == 32
    assert TrainConfig(image_size=32, augment=False).train_image_size == 32
    assert TrainConfig(image_size=32, crop_source=1.0).train_image_size == 32
