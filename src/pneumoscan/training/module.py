"""The LightningModule: class-weighted BCE on one logit, kornia augmentation on the device, metrics; with a
teacher (:mod:`~pneumoscan.training.distill`), the target mixes its probability on the same augmented batch.

The network lives under the attribute ``model`` so that checkpoint keys start with ``model.`` (the model
file contract), and every checkpoint carries ``checkpoint["pneumoscan"]``: the :class:`ModelMeta` JSON with
the threshold chosen on that epoch's validation predictions.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import CatMetric
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC

from pneumoscan import __version__
from pneumoscan.models import ModelMeta
from pneumoscan.models.registry import head_parameters, member_logits
from pneumoscan.training.config import TrainConfig
from pneumoscan.training.distill import soft_targets
from pneumoscan.training.metrics import operating_points


def build_augmentation(config: TrainConfig) -> nn.Module | None:
    """Random crop, border bands, flip, rotation, zoom, shift and tone changes, drawn per image (on batches)."""
    if not config.augment:
        return None
    import kornia.augmentation as K

    ops: list[nn.Module] = []
    if config.crop_scale > 0:
        # Framing differs between sites (collimation, how much of the abdomen and neck is in view).
        size = (config.image_size, config.image_size)
        ops.append(K.RandomResizedCrop(size, scale=(config.crop_scale, 1.0), ratio=(3 / 4, 4 / 3), p=1.0))
    if config.border > 0:
        ops.append(RandomBorderBands(p=config.border))
    if config.flip > 0:
        ops.append(K.RandomHorizontalFlip(p=config.flip))
    if config.rotation > 0 or config.zoom > 0 or config.shift > 0:
        ops.append(K.RandomAffine(
            degrees=config.rotation, translate=(config.shift, config.shift) if config.shift > 0 else None,
            scale=(1 - config.zoom, 1 + config.zoom) if config.zoom > 0 else None, p=1.0,
        ))
    if config.brightness > 0:
        ops.append(K.RandomBrightness(brightness=(1 - config.brightness, 1 + config.brightness), p=1.0))
    if config.contrast > 0:
        ops.append(K.RandomContrast(contrast=(1 - config.contrast, 1 + config.contrast), p=1.0))
    if config.gamma > 0:
        ops.append(K.RandomGamma(gamma=(1 / (1 + config.gamma), 1 + config.gamma), p=1.0))
    if config.equalize > 0:
        ops.append(K.RandomEqualize(p=config.equalize))
    if config.clahe > 0:
        ops.append(K.RandomClahe(clip_limit=(1.0, 4.0), grid_size=(8, 8), p=config.clahe))
    if config.blur > 0:
        ops.append(K.RandomGaussianBlur(kernel_size=(5, 5), sigma=(0.1, 1.5), p=config.blur))
    if config.sharpen > 0:
        ops.append(K.RandomSharpness(sharpness=(0.0, 1.0), p=config.sharpen))
    if config.noise > 0:
        ops.append(K.RandomGaussianNoise(mean=0.0, std=config.noise, p=0.5))
    if not ops:
        return None
    return K.AugmentationSequential(*ops, data_keys=["input"], same_on_batch=False)


class RandomBorderBands(nn.Module):
    """Blank a random band along each border of an image, drawn independently per image and per side.

    What lies at the frame (markers, the edge of the collimation, how much of the neck or abdomen is in
    view) differs between sites and says nothing about the lungs; blanked bands of random width make it
    an unreliable cue. Each image is masked with probability ``p``; each of its four bands is up to
    ``max_share`` of the side. Draws come from torch's generator (seeded by the run).
    """

    def __init__(self, p: float = 0.5, max_share: float = 0.12, value: float = 0.0) -> None:
        super().__init__()
        self.p, self.max_share, self.value = p, max_share, value

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        n, _, h, w = images.shape
        device = images.device
        chosen = torch.rand(n, 1, device=device) < self.p
        widths = torch.rand(n, 4, device=device) * self.max_share * chosen  # top, bottom, left, right
        rows = torch.arange(h, device=device).view(1, h, 1) / h
        cols = torch.arange(w, device=device).view(1, 1, w) / w
        blank = ((rows < widths[:, 0].view(n, 1, 1)) | (rows >= 1 - widths[:, 1].view(n, 1, 1))
                 | (cols < widths[:, 2].view(n, 1, 1)) | (cols >= 1 - widths[:, 3].view(n, 1, 1)))
        return images.masked_fill(blank.unsqueeze(1), self.value)


class XrayClassifier(L.LightningModule):
    """Binary pneumonia classifier around any registry network (one-channel [0, 1] input, one logit)."""

    def __init__(self, model: nn.Module, config: TrainConfig, class_weights: tuple[float, float] = (1.0, 1.0),
                 provenance: dict[str, Any] | None = None, run_id: str = "", teacher: nn.Module | None = None
                 ) -> None:
        super().__init__()
        self.model = model
        self.config = config
        # Held in a tuple, not as a sub-module: kornia's parameter buffers must not enter the checkpoint,
        # whose state_dict holds the network only (keys "model.*").
        self._augment = (build_augmentation(config),)
        # The teacher likewise (a tuple): it is not the model, so it stays out of checkpoints and model files.
        self._teacher = (teacher,)
        self.register_buffer("class_weights", torch.tensor(class_weights, dtype=torch.float32), persistent=False)
        self.provenance = provenance or {}
        self.run_id = run_id
        self.train_auc, self.train_acc = BinaryAUROC(), BinaryAccuracy()
        self.val_auc, self.val_acc = BinaryAUROC(), BinaryAccuracy()
        self.val_probs, self.val_targets = CatMetric(), CatMetric()
        self.points: dict[str, float] = {"youden": 0.5}
        self.wall_offset = 0.0  # seconds trained before a resume
        self._fit_start = time.perf_counter()
        if config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

    # -- set-up ------------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if self.trainer is not None and self.trainer.strategy.root_device.type == "cpu":
            # Every process of a CPU run shares the same cores: split them instead of oversubscribing.
            procs = max(1, self.trainer.num_devices)
            torch.set_num_threads(self.config.threads or max(1, (os.cpu_count() or 1) // procs))

    def on_fit_start(self) -> None:
        self._fit_start = time.perf_counter()
        if self._teacher[0] is not None:
            self._teacher[0].to(self.device)

    # -- data on the device ------------------------------------------------------------------------------
    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        images, labels, *teacher = batch  # teacher: the scores of --distill-view original, when given
        images = images.float().div_(255.0)
        augment = self._augment[0]
        if augment is not None and self.trainer is not None and self.trainer.training:
            with torch.no_grad():
                images = augment.to(images.device)(images).clamp_(0.0, 1.0)
        if self.config.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, labels, *teacher

    # -- steps -------------------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor, smoothing: float = 0.0,
              teacher: torch.Tensor | None = None) -> torch.Tensor:
        # Weighted by the true class, with a teacher too: the label part stays class-balanced as without one.
        weights = self.class_weights[labels.long()]
        targets = soft_targets(labels, teacher, self.config.distill_weight, smoothing)
        return F.binary_cross_entropy_with_logits(logits, targets, weight=weights)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        images, labels, *scores = batch
        # The teacher scores exactly the augmented batch the student learns from (eval mode, no gradients),
        # or gave its scores of the un-augmented images with the batch (--distill-view original).
        teacher = self._teacher[0](images) if self._teacher[0] is not None else (scores[0] if scores else None)
        members = member_logits(self.model, images).float()
        # Each member of an ensemble learns from its own loss, so the members stay different networks.
        loss = torch.stack([self._loss(members[:, i], labels, self.config.label_smoothing, teacher)
                            for i in range(members.shape[1])]).mean()
        logits = members.mean(dim=1)
        probs = torch.sigmoid(logits.detach())
        self.train_auc.update(probs, labels.long())
        self.train_acc.update(probs, labels.long())
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(labels),
                 sync_dist=True)
        self.log("train_auc", self.train_auc, on_step=False, on_epoch=True)
        self.log("train_acc", self.train_acc, on_step=False, on_epoch=True)
        return loss

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        images, _ = batch
        return torch.sigmoid(self(images).float().reshape(-1))

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        images, labels = batch
        logits = self(images).float().reshape(-1)
        probs = torch.sigmoid(logits)
        self.val_auc.update(probs, labels.long())
        self.val_acc.update(probs, labels.long())
        self.val_probs.update(probs)
        self.val_targets.update(labels)
        self.log("val_loss", self._loss(logits, labels), on_step=False, on_epoch=True, prog_bar=True,
                 batch_size=len(labels), sync_dist=True)
        self.log("val_auc", self.val_auc, on_step=False, on_epoch=True, prog_bar=True)
        self.log("val_acc", self.val_acc, on_step=False, on_epoch=True)

    def on_validation_epoch_end(self) -> None:
        probs = self.val_probs.compute().detach().cpu().numpy()
        targets = self.val_targets.compute().detach().cpu().numpy()
        self.val_probs.reset()
        self.val_targets.reset()
        self.points = operating_points(targets, probs, seed=self.config.seed)
        if not self.trainer.sanity_checking:
            self.log("wall_s", self.wall_offset + time.perf_counter() - self._fit_start, sync_dist=False,
                     rank_zero_only=True)

    def on_train_epoch_start(self) -> None:
        if self.config.initial_weights and self.config.freeze_epochs > 0:
            frozen = self.current_epoch < self.config.freeze_epochs
            head = {id(p) for p in head_parameters(self.model)}
            for parameter in self.model.parameters():
                if id(parameter) not in head:
                    parameter.requires_grad_(not frozen)

    def on_train_epoch_end(self) -> None:
        self.log("lr", float(self.trainer.optimizers[0].param_groups[0]["lr"]), rank_zero_only=True)

    # -- optimisation ------------------------------------------------------------------------------------
    def parameter_groups(self) -> list[dict[str, Any]]:
        """The head first at ``--lr``; with ``--pretrained``, the pretrained layers at ``--pretrained-lr-scale``
        of it (one group at ``--lr`` otherwise)."""
        c = self.config
        if not c.initial_weights:
            return [{"params": list(self.model.parameters()), "lr": c.lr}]
        head = head_parameters(self.model)
        ids = {id(p) for p in head}
        backbone = [p for p in self.model.parameters() if id(p) not in ids]
        return [{"params": head, "lr": c.lr}, {"params": backbone, "lr": c.lr * c.pretrained_lr_scale}]

    def configure_optimizers(self) -> Any:
        c = self.config
        params = self.parameter_groups()
        if c.optimizer == "adam":
            optimizer = torch.optim.Adam(params, lr=c.lr, weight_decay=c.weight_decay)
        elif c.optimizer == "adamw":
            optimizer = torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay)
        elif c.optimizer == "rmsprop":
            optimizer = torch.optim.RMSprop(params, lr=c.lr, weight_decay=c.weight_decay, momentum=0.9)
        else:
            optimizer = torch.optim.SGD(params, lr=c.lr, weight_decay=c.weight_decay, momentum=0.9, nesterov=True)
        if c.scheduler == "none":
            return optimizer
        if c.scheduler == "plateau":
            mode = "min" if c.monitor == "val_loss" else "max"
            plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode=mode, factor=0.3, patience=1)
            return {"optimizer": optimizer,
                    "lr_scheduler": {"scheduler": plateau, "monitor": c.monitor, "interval": "epoch"}}
        total = max(1, int(self.trainer.estimated_stepping_batches))
        steps_per_epoch = max(1, total // max(1, c.epochs))
        warmup = min(total - 1, int(c.warmup_epochs * steps_per_epoch))

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

        cosine = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": cosine, "interval": "step"}}

    # -- checkpoints -------------------------------------------------------------------------------------
    def meta(self) -> ModelMeta:
        """The model file metadata for the current weights (threshold from the last validation)."""
        metrics = {k: float(v) for k, v in self.trainer.callback_metrics.items()
                   if k.startswith("val_") and torch.as_tensor(v).numel() == 1} if self._trainer else {}
        return ModelMeta(
            name=self.provenance.get("model", self.config.model), image_size=self.config.image_size,
            fit=self.config.fit, threshold=float(self.points.get(self.config.threshold_rule, 0.5)),
            operating_points=dict(self.points), version=__version__, run_id=self.run_id,
            created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), val_metrics=metrics, provenance=self.provenance,
            members=self.config.members,
        )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["pneumoscan"] = self.meta().to_json()
        checkpoint["pneumoscan_wall_s"] = float(self.wall_offset + time.perf_counter() - self._fit_start)
        # The batch order, augmentation and dropout all draw from torch's generators: saving them makes a
        # resumed run continue exactly as an uninterrupted one would (tensors only: weights_only loads it).
        checkpoint["pneumoscan_rng"] = {"cpu": torch.get_rng_state(),
                                        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.wall_offset = float(checkpoint.get("pneumoscan_wall_s", 0.0))
        if rng := checkpoint.get("pneumoscan_rng"):
            torch.set_rng_state(rng["cpu"])
            if rng["cuda"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])


def validation_probabilities(module: XrayClassifier, datamodule: L.LightningDataModule) -> np.ndarray:
    """The module's probabilities for the DataModule's validation images (its ``predict_dataloader``), in
    order, without augmentation.

    Lightning's predict loop on a one-process CPU trainer in float32, whatever trained the weights: the
    threshold is chosen on the same numbers on every machine, and after a multi-process fit only the
    first process scores.
    """
    from pneumoscan.training.console import quiet_lightning

    quiet_lightning()
    scorer = L.Trainer(accelerator="cpu", devices=1, precision="32-true", logger=False, enable_checkpointing=False,
                       enable_progress_bar=False, enable_model_summary=False)
    with warnings.catch_warnings():
        # Lightning's own deprecation notice about torch's pytree API: nothing a user can act on.
        warnings.filterwarnings("ignore", message=".*LeafSpec.*is deprecated.*")
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")  # in RAM already
        batches = scorer.predict(module, datamodule=datamodule) or []
    return torch.cat(batches).numpy() if batches else np.zeros(0, np.float32)
