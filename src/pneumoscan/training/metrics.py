"""Thresholds chosen on validation and the headline validation metrics stored with a model."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

from pneumoscan.evaluation.operating import choose_operating_points


def operating_points(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """Youden / sens95 / spec95 thresholds picked on validation (see ``evaluation.operating``).

    Early in a tiny run the validation batch may hold one class; training then stores 0.5 rather than
    stopping, and evaluation, which needs both classes, refuses such a model's points itself.
    """
    labels = np.asarray(labels).astype(int).ravel()
    if len(np.unique(labels)) < 2:
        return {"youden": 0.5, "sens95": 0.5, "spec95": 0.5}
    return choose_operating_points(labels, probabilities)


def binary_summary(labels: np.ndarray, probabilities: np.ndarray, threshold: float) -> dict[str, float]:
    """ROC-AUC, and accuracy, sensitivity and specificity at ``threshold``."""
    labels = np.asarray(labels).astype(int).ravel()
    probabilities = np.asarray(probabilities, dtype=np.float64).ravel()
    predicted = probabilities >= threshold
    positives, negatives = labels == 1, labels == 0
    return {
        "auc": float(roc_auc_score(labels, probabilities)) if positives.any() and negatives.any() else float("nan"),
        "accuracy": float((predicted == positives).mean()) if len(labels) else float("nan"),
        "sensitivity": float(predicted[positives].mean()) if positives.any() else float("nan"),
        "specificity": float((~predicted[negatives]).mean()) if negatives.any() else float("nan"),
        "threshold": float(threshold),
        "images": int(len(labels)),
    }
