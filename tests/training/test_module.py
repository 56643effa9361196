"""The pieces around the loop: augmentation only while training, the oversampling option.

Lightning is imported by the tests that use it, not by the module: every xdist worker imports every test
module while collecting, and Lightning alone costs each of them 2-3 s (DEVELOPERS.md, tests).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from pneumoscan.data import Sample
from pneumoscan.models import build_model
from pneumoscan.training import TrainConfig

if TYPE_CHECKING:
    import lightning as L

    from pneumoscan.training.module import XrayClassifier


def attached_module(config: TrainConfig) -> tuple[XrayClassifier, L.Trainer]:
    import lightning as L

    from pneumoscan.training.module import XrayClassifier

    module = XrayClassifier(build_model(config.model, config.image_size), config)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False)
    module.trainer = trainer
    return module, trainer


def test_batches_are_augmented_per_image_in_training_and_left_alone_in_validation():
    torch.manual_seed(0)
    module, trainer = attached_module(TrainConfig(image_size=32, channels_last=False))
    images = torch.randint(0, 256, (8, 1, 32, 32), dtype=torch.uint8)
    labels = torch.zeros(8)
    trainer.validating = True
    val_images, _ = module.on_after_batch_transfer((images, labels), 0)
    assert torch.equal(val_images, images.float() / 255)
    trainer.training = True
    same = images[:1].expand(8, -1, -1, -1).contiguous()
    train_images, _ = module.on_after_batch_transfer((same, labels), 0)
    assert train_images.dtype == torch.float32 and train_images.min() >= 0 and train_images.max() <= 1
    # one image copied 8 times comes out as 8 different images: parameters are drawn per image
    assert len({tuple(x.flatten()[:64].tolist()) for x in train_images}) == 8


def test_no_augment_leaves_training_batches_alone():
    module, trainer = attached_module(TrainConfig(image_size=32, augment=False, channels_last=False))
    trainer.training = True
    images = torch.randint(0, 256, (4, 1, 32, 32), dtype=torch.uint8)
    out, _ = module.on_after_batch_transfer((images, torch.zeros(4)), 0)
    assert torch.equal(out, images.float() / 255)


def test_border_bands_blank_only_the_frame_with_widths_drawn_per_image_and_side():
    from pneumoscan.training.module import RandomBorderBands

    torch.manual_seed(0)
    images = torch.ones(200, 1, 50, 40)
    out = RandomBorderBands(p=1.0, max_share=0.12)(images)
    blank = out[:, 0] == 0
    # the centre (outside any band of at most 12 % of the side) is never touched
    assert not blank[:, 6:44, 5:35].any()
    # each side's band width varies between images: a top band's rows are blank across the whole width
    top = blank[:, :, 20].int().argmin(dim=1)  # first kept row in the middle column
    assert len(set(top.tolist())) > 3 and top.max() <= 6
    assert torch.equal(RandomBorderBands(p=0.0)(images), images)
    half = RandomBorderBands(p=0.5)(images)
    masked = (half == 0).flatten(1).any(dim=1).float().mean().item()
    assert 0.3 < masked < 0.7


def test_the_default_augmentation_blanks_borders_and_crops_to_half_the_area():
    from pneumoscan.training.module import build_augmentation

    config = TrainConfig()
    assert config.crop_scale == 0.5 and config.border > 0 and config.equalize > 0
    names = [type(op).__name__ for op in build_augmentation(config).children()]
    assert "RandomBorderBands" in names and "RandomEqualize" in names
    assert build_augmentation(TrainConfig(border=0.0, equalize=0.0)) is not None
    assert "RandomBorderBands" not in [type(op).__name__ for op in build_augmentation(
        TrainConfig(border=0.0)).children()]


def test_weighted_sampler_draws_both_classes_about_equally_from_imbalanced_data():
    from pneumoscan.training.data import PreparedData, XrayDataModule

    labels = [1] * 180 + [0] * 20
    samples = [Sample(Path(f"x{i}.png"), lab, str(i), "train") for i, lab in enumerate(labels)]
    data = PreparedData(Path("."), np.zeros((200, 8, 8), np.uint8), samples, np.zeros((2, 8, 8), np.uint8),
                        samples[:2])
    for sampler, expected in (("weighted", (0.4, 0.6)), ("shuffle", (0.85, 0.95))):
        module = XrayDataModule(TrainConfig(sampler=sampler, batch_size=50, seed=1))
        module.data = data  # already in memory: setup has nothing to list or decode
        module.setup("fit")
        batches = [y for _ in range(5) for _, y in module.train_dataloader()]
        share = float(torch.cat(batches).mean())
        assert expected[0] <= share <= expected[1], (sampler, share)


def test_pretrained_layers_learn_at_a_share_of_the_heads_rate_and_can_start_frozen():
    from pneumoscan.training.module import XrayClassifier

    config = TrainConfig(model="efficientnet-lite0", image_size=32, pretrained="weights.safetensors", lr=3e-3,
                         pretrained_lr_scale=0.25, freeze_epochs=1)
    module = XrayClassifier(build_model(config.model, config.image_size), config)
    head, backbone = module.parameter_groups()
    assert [p.shape for p in head["params"]] == [torch.Size([1, 1280]), torch.Size([1])]
    assert head["lr"] == 3e-3 and backbone["lr"] == 3e-3 * 0.25
    assert len(head["params"]) + len(backbone["params"]) == len(list(module.model.parameters()))
    module.on_train_epoch_start()  # epoch 0: only the head learns
    assert all(p.requires_grad for p in head["params"])
    assert not any(p.requires_grad for p in backbone["params"])

    scratch = XrayClassifier(build_model("mini-resnet", 32), TrainConfig(model="mini-resnet", image_size=32, lr=3e-3))
    (only,) = scratch.parameter_groups()  # from scratch: one rate for every layer, nothing frozen
    assert only["lr"] == 3e-3 and len(only["params"]) == len(list(scratch.model.parameters()))
