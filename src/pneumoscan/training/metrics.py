"""Thresholds chosen on validation and the headline validation metrics stored with a model."""

from __future__ import annotations

import numpy as np

from pneumoscan.evaluation.metrics import threshold_free_metrics, threshold_metrics
from pneumoscan.evaluation.operating import choose_operating_points


def operating_points(labels: np.ndarray, probabilities: np.ndarray, seed: int = 0) -> dict[str, float]:
    """Youden / sens95 / spec95 thresholds picked on validation (see ``evaluation.operating``).

    Early in a tiny run the validation batch may hold one class; training then stores 0.5 rather than
    stopping, and evaluation, which needs both classes, refuses such a model's points itself.
    """
    labels = np.asarray(labels).astype(int).ravel()
    if len(np.unique(labels)) < 2:
        return {"youden": 0.5, "youden-median": 0.5, "sens95": 0.5, "sens95-median": 0.5, "spec95": 0.5}
    return choose_operating_points(labels, probabilities, seed=seed)


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
