"""Thresholds chosen on validation and the headline validation metrics stored with a model."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve


def operating_points(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """Probability thresholds picked on (validation) data.

    ``youden`` maximises sensitivity + specificity - 1; ``sens95`` is the highest threshold whose
    sensitivity is at least 0.95; ``spec95`` the lowest threshold whose specificity is at least 0.95.
    A prediction is positive when ``probability >= threshold``.
    """
    labels = np.asarray(labels).astype(int).ravel()
    probabilities = np.asarray(probabilities, dtype=np.float64).ravel()
    if len(np.unique(labels)) < 2:
        return {"youden": 0.5, "sens95": 0.5, "spec95": 0.5}
    fpr, tpr, thresholds = roc_curve(labels, probabilities)
    # The first threshold is +inf ("nothing is positive"): the smallest number above every score says
    # the same and stays a finite, storable probability (1.0 itself would call a score of 1.0 positive).
    thresholds[0] = np.nextafter(probabilities.max(), np.inf)
    youden = float(thresholds[int(np.argmax(tpr - fpr))])
    sens_ok = np.flatnonzero(tpr >= 0.95)
    spec_ok = np.flatnonzero(1.0 - fpr >= 0.95)
    return {
        "youden": youden,
        "sens95": float(thresholds[sens_ok[0]]) if len(sens_ok) else 0.0,
        "spec95": float(thresholds[spec_ok[-1]]) if len(spec_ok) else 1.0,
    }


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
