"""Fitting a model's subtype head: bacterial or viral, on the penultimate features of a trained network.

Training-time work (:mod:`pneumoscan.models.subtype_head` holds the head; the row maker applies it). The
probe is fitted on the training PNEUMONIA images whose subtype is known (and their mirror images: the
subtype does not depend on the side), calibrated and given its operating point on the validation
PNEUMONIA images whose subtype is known. Images of unknown subtype are left out, never guessed. The
network is not changed: the pneumonia answer stays what it was.

The stored rule (``ModelMeta.subtype``): a temperature fitted by log loss on validation; the uncertain
band ``[low, high]`` where ``low`` is the 10th percentile of the validation viral images' probabilities
(at most a tenth of viral cases answered bacterial) and ``high`` the 90th percentile of the bacterial
ones (at most a tenth of bacterial cases answered viral); the single threshold, where sensitivity and
specificity are reported, is Youden's on validation, clipped into the band. When the band is empty
(``low >= high``: validation separates the subtypes that well) both ends are that threshold.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from pneumoscan._memory import keep_freed_memory
from pneumoscan.data.records import SUBTYPES
from pneumoscan.errors import ConfigError, DatasetError

MIN_PER_SUBTYPE = {"train": 20, "val": 10}  # images of each subtype needed to fit / to calibrate
MISSED = 0.10  # the share of each subtype the band may answer as the other
# Inverse L2 strengths of the probe on standardised features tried; the one with the lowest validation log
# loss is kept (the features are 1,280 wide for a Lite0: the fit alone would over-fit the training images).
PROBE_CS = (0.0003, 0.001, 0.003, 0.01, 0.03, 0.1)
RULE = ("probe strength by validation log loss; temperature by log loss on validation; bacterial below the 10th percentile of the validation viral "
        "images' probabilities, viral at or above the 90th percentile of the bacterial ones, uncertain between; "
        "threshold: Youden's J on validation, clipped into that band")


def subtype_targets(subtypes: list[str | None]) -> np.ndarray:
    """1 viral, 0 bacterial, -1 unknown (masked) for each image's subtype."""
    return np.array([-1 if s is None else SUBTYPES.index(s) for s in subtypes], dtype=np.int64)


def fit_subtype_on_pixels(model: Any, train_images: np.ndarray, train_subtypes: list[str | None],
                          val_images: np.ndarray, val_subtypes: list[str | None], seed: int = 0) -> dict[str, Any]:
    """Fit, attach and describe the subtype head of ``model`` (in memory): ``*_images`` uint8 (N, S, S), the
    model's input; ``*_subtypes`` each image's ``bacterial``/``viral``/None. Returns the ``ModelMeta.subtype``
    entry. Raises :class:`ConfigError` when either split has too few images of a subtype."""
    import torch

    from pneumoscan.models.scope_gate import features_of, fit_linear_probe
    from pneumoscan.models.subtype_head import SubtypeHead, attach_subtype
    from pneumoscan.training.metrics import binary_summary, operating_points, validation_temperature

    y_train, y_val = subtype_targets(train_subtypes), subtype_targets(val_subtypes)
    for split, y in (("train", y_train), ("val", y_val)):
        counts = [int((y == k).sum()) for k in range(len(SUBTYPES))]
        if min(counts) < MIN_PER_SUBTYPE[split]:
            raise ConfigError(f"the subtype head needs at least {MIN_PER_SUBTYPE[split]} {split} images of each "
                              f"subtype with a known label (got {counts[0]} bacterial, {counts[1]} viral)")
    known = np.flatnonzero(y_train >= 0)
    images = train_images[known]
    x = np.concatenate([features_of(model, images), features_of(model, np.ascontiguousarray(images[:, :, ::-1]))])
    val_known = np.flatnonzero(y_val >= 0)
    val_features, labels = torch.from_numpy(features_of(model, val_images[val_known])), y_val[val_known]
    tried = {}
    for c in PROBE_CS:
        head = SubtypeHead(x.shape[1])
        fit_linear_probe(head.weight, head.bias, x, np.concatenate([y_train[known]] * 2), c=c, seed=seed)
        with torch.inference_mode():
            logits = head(val_features).numpy().reshape(-1)
        tried[c] = (_log_loss(labels, logits), head, logits)
    probe_c = min(tried, key=lambda c: tried[c][0])
    _, head, logits = tried[probe_c]
    temperature, kept_raw = validation_temperature(labels, 1.0 / (1.0 + np.exp(-logits)))
    probabilities = 1.0 / (1.0 + np.exp(-logits / temperature))
    threshold = float(operating_points(labels, probabilities, seed=seed)["youden"])
    low = float(np.quantile(probabilities[labels == 1], MISSED, method="lower"))
    high = float(np.nextafter(np.quantile(probabilities[labels == 0], 1 - MISSED, method="higher"), 2.0))
    if low >= high:
        low = high = threshold
    threshold = min(max(threshold, low), high)
    attach_subtype(model, head.to(next(model.parameters()).device))
    info: dict[str, Any] = {
        "temperature": float(temperature), "threshold": threshold, "uncertain": [low, min(high, 1.0)],
        "rule": RULE, "classes": list(SUBTYPES),
        "val_metrics": {**binary_summary(labels, probabilities, threshold),
                        "uncertain_share": float(np.mean((probabilities >= low) & (probabilities < high)))},
        "fitted_on": {"train_bacterial": int((y_train == 0).sum()), "train_viral": int((y_train == 1).sum()),
                      "val_bacterial": int((labels == 0).sum()), "val_viral": int((labels == 1).sum()),
                      "views": "each training image and its mirror image", "probe_c": probe_c,
                      "probe_c_tried": {str(c): round(v[0], 4) for c, v in tried.items()}, "seed": seed},
    }
    if kept_raw:
        info["note"] = f"temperature kept at 1: {kept_raw}"
    return info


def fit_subtype(model_path: str | os.PathLike, data: str | os.PathLike | None = None, *,
                out: str | os.PathLike | None = None) -> dict[str, Any]:
    """Give the trained model at ``model_path`` its subtype head, fitted on the training and validation images
    of the split its own training made, and save it (``out``: another folder; default: in place). Returns the
    ``ModelMeta.subtype`` entry.

    The split is made again from the training options stored in the model (its data, or ``data`` when the
    data moved; its seed and fractions) and must be the one it was trained on: the data hash in its
    provenance is checked, so the head is never fitted or calibrated on images the model was judged on.
    """
    from dataclasses import replace

    from pneumoscan.config_files import from_dict
    from pneumoscan.models import load_model, save_model
    from pneumoscan.models.artifact import find_model_file, run_folder_of
    from pneumoscan.training.config import TrainConfig
    from pneumoscan.training.data import XrayDataModule

    keep_freed_memory()  # the fit's forward passes reuse their memory (see pneumoscan._memory)
    model, meta = load_model(model_path)
    stored = meta.provenance.get("config")
    if not isinstance(stored, dict) or not meta.provenance.get("data_manifest_sha256"):
        raise ConfigError(f"{model_path}: the model does not record the training options and data it was trained "
                          "with, so its validation patients are unknown; train it again to get a subtype head")
    config = from_dict(TrainConfig, {**stored, **({"data": os.fspath(data)} if data is not None else {})},
                       source=f"{model_path} (its stored training options)")
    datamodule = XrayDataModule(config)
    datamodule.prepare_data()
    datamodule.setup("fit")
    split = datamodule.data
    if split.manifest_hash() != meta.provenance["data_manifest_sha256"]:
        raise DatasetError(f"{config.data}: its split is not the one {model_path} was trained on (another data "
                           "folder, or files changed); pass the training data")
    subtype = fit_subtype_on_pixels(model, split.train_images, [s.subtype for s in split.train_samples],
                                    split.val_images, [s.subtype for s in split.val_samples], seed=config.seed)
    target = Path(out) if out is not None else (run_folder_of(model_path) if Path(model_path).is_dir()
                                                else find_model_file(model_path).parent)
    save_model(target, model, replace(meta, subtype=subtype))
    return subtype


def _log_loss(labels: np.ndarray, logits: np.ndarray) -> float:
    return float(np.mean(np.logaddexp(0.0, logits) - labels * logits))


__all__ = ["MIN_PER_SUBTYPE", "fit_subtype", "fit_subtype_on_pixels", "subtype_targets"]
