"""Thresholds chosen on validation and the headline validation metrics stored with a model."""

from __future__ import annotations

from dataclasses import fields, replace

import numpy as np

from pneumoscan.errors import DatasetError
from pneumoscan.evaluation.metrics import threshold_free_metrics, threshold_metrics
from pneumoscan.evaluation.operating import (
    OPERATING_POINTS,
    balanced_weights,
    choose_operating_points,
    fit_temperature,
)
from pneumoscan.models.artifact import ModelMeta
from pneumoscan.training.config import TrainConfig

# A temperature outside this range means validation cannot support it (a handful of images, or
# classes that validation separates perfectly): the model then keeps its raw probabilities.
TEMPERATURE_RANGE = (0.2, 5.0)


def operating_points(labels: np.ndarray, probabilities: np.ndarray, seed: int = 0) -> dict[str, float]:
    """Youden / sens95 / spec95 thresholds picked on validation (see ``evaluation.operating``).

    Early in a tiny run the validation batch may hold one class; training then stores 0.5 rather than
    stopping, and evaluation, which needs both classes, refuses such a model's points itself.
    """
    labels = np.asarray(labels).astype(int).ravel()
    if len(np.unique(labels)) < 2:
        return dict.fromkeys(OPERATING_POINTS, 0.5)
    return choose_operating_points(labels, probabilities, seed=seed)


def validation_temperature(labels: np.ndarray, probabilities: np.ndarray,
                           balanced: bool = False) -> tuple[float, str | None]:
    """(temperature, why it is 1) fitted on validation after training; the reason is None when fitted.

    Label smoothing and heavy augmentation leave the network under-confident on clean images (validation
    ECE near 0.1); one temperature fitted by log loss on validation makes the stored probabilities honest
    without changing the ranking or any decision (the thresholds are chosen after it). A class-balanced
    model (``balanced``) states probabilities for a population with as many normal as pneumonia cases, so
    its temperature is fitted on validation weighted to that population, not to validation's own mix.
    """
    labels = np.asarray(labels).astype(int).ravel()
    probabilities = np.asarray(probabilities, dtype=np.float64).ravel()
    if len(np.unique(labels)) < 2:
        return 1.0, "validation holds one class"
    if probabilities[labels == 1].min() > probabilities[labels == 0].max():
        return 1.0, "validation separates the classes perfectly, so it cannot set a temperature"
    try:
        temperature = fit_temperature(labels, probabilities, balanced_weights(labels) if balanced else None)
    except DatasetError as exc:  # scores anti-correlated with the labels (a network that has not learned)
        return 1.0, str(exc).split("; ")[0]
    low, high = TEMPERATURE_RANGE
    if not low <= temperature <= high:
        return 1.0, f"the fitted temperature {temperature:.3g} is outside {low:g}-{high:g}"
    return float(temperature), None


def binary_summary(labels: np.ndarray, probabilities: np.ndarray, threshold: float) -> dict[str, float]:
    """ROC-AUC, and accuracy, sensitivity and specificity at ``threshold``: evaluation's own metrics, so the
    figures stored in a model file are computed exactly as its evaluation report computes them."""
    at_threshold = threshold_metrics(labels, probabilities, threshold)
    return {
        "auc": float(threshold_free_metrics(labels, probabilities)["roc_auc"]),
        **{name: float(at_threshold[name]) for name in ("accuracy", "sensitivity", "specificity")},
        "threshold": float(threshold),
        "images": int(len(np.asarray(labels).ravel())),
    }


def refit_on_validation(meta: ModelMeta, labels: np.ndarray, raw_probabilities: np.ndarray) -> ModelMeta:
    """``meta`` with its temperature, operating points, threshold and validation metrics chosen again from
    these validation predictions (``sigmoid(logit)``, before any temperature), by the rules its training
    recorded (``threshold_rule``, ``temperature_scaling``, class balance and seed in its config), as
    training chose them: for a graph whose outputs differ from the trained model's (an int8 one)."""
    from pneumoscan.evaluation.operating import apply_temperature

    recorded = meta.provenance.get("config")
    known = {f.name for f in fields(TrainConfig)}  # a config recorded by another version may hold other keys
    config = TrainConfig(**{k: v for k, v in (recorded if isinstance(recorded, dict) else {}).items() if k in known})
    labels = np.asarray(labels).astype(int).ravel()
    probabilities = np.asarray(raw_probabilities, dtype=np.float64).ravel()
    temperature = 1.0
    if config.temperature_scaling:
        temperature, _ = validation_temperature(labels, probabilities, balanced=config.class_balanced)
        probabilities = apply_temperature(probabilities, temperature)
    points = operating_points(labels, probabilities, seed=config.seed)
    threshold = points[config.threshold_rule]
    metrics = {**binary_summary(labels, probabilities, threshold), "best_epoch": meta.val_metrics.get("best_epoch", -1)}
    return replace(meta, temperature=temperature, threshold=threshold, operating_points=points, val_metrics=metrics)
