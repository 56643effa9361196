"""Screening metrics, their patient-level bootstrap resamples, and calibration error (the intervals drawn
from the resamples are made in :mod:`~pneumoscan.evaluation.intervals`).

Point estimates come from scikit-learn, the reference everyone can check. The bootstrap needs the same
metrics on 1,000 resamples; calling scikit-learn 12,000 times would take many seconds, so the resamples
are computed at once in numpy as *weighted* metrics: resampling patients with replacement gives every
image an integer weight (how often its patient was drawn), and a weighted metric on the original images
equals the plain metric on the resampled set. The tests check both paths against scikit-learn.
"""

from __future__ import annotations

import warnings

import numpy as np

THRESHOLD_METRICS: tuple[str, ...] = (
    "accuracy", "sensitivity", "specificity", "ppv", "npv", "f1", "balanced_accuracy",
)
"""Metrics that depend on the decision threshold."""

RANKING_METRICS: tuple[str, ...] = ("roc_auc", "pr_auc")
CALIBRATION_METRICS: tuple[str, ...] = ("brier", "log_loss", "ece")
THRESHOLD_FREE_METRICS: tuple[str, ...] = RANKING_METRICS + CALIBRATION_METRICS
METRICS: tuple[str, ...] = THRESHOLD_METRICS + THRESHOLD_FREE_METRICS

LOWER_IS_BETTER = frozenset(CALIBRATION_METRICS)

_EPS = np.finfo(np.float64).eps  # scikit-learn's log_loss clips probabilities to [eps, 1 - eps]


def confusion(labels: np.ndarray, probs: np.ndarray, threshold: float) -> dict[str, int]:
    """Counts of the 2x2 confusion matrix; an image is called PNEUMONIA when ``prob >= threshold``."""
    from sklearn.metrics import confusion_matrix

    labels = np.asarray(labels, dtype=np.int64)
    pred = (np.asarray(probs) >= threshold).astype(np.int64)
    (tn, fp), (fn, tp) = confusion_matrix(labels, pred, labels=[0, 1])
    return {"tn": int(tn), "fp": int(fp), "fn": int(fn), "tp": int(tp)}


def threshold_metrics(labels: np.ndarray, probs: np.ndarray, threshold: float) -> dict[str, float]:
    """Accuracy, sensitivity, specificity, PPV, NPV, F1 and balanced accuracy (scikit-learn); NaN when undefined."""
    from sklearn import metrics as skm

    labels = np.asarray(labels, dtype=np.int64)
    pred = (np.asarray(probs) >= threshold).astype(np.int64)
    nan = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one class absent: the metric is NaN, said in the report
        has_pos, has_neg = bool((labels == 1).any()), bool((labels == 0).any())
        out = {
            "accuracy": skm.accuracy_score(labels, pred),
            "sensitivity": skm.recall_score(labels, pred, pos_label=1, zero_division=nan),
            "specificity": skm.recall_score(labels, pred, pos_label=0, zero_division=nan),
            "ppv": skm.precision_score(labels, pred, pos_label=1, zero_division=nan),
            "npv": skm.precision_score(labels, pred, pos_label=0, zero_division=nan),
            "f1": skm.f1_score(labels, pred, pos_label=1, zero_division=nan),
            "balanced_accuracy": skm.balanced_accuracy_score(labels, pred) if has_pos and has_neg else nan,
        }
    return {k: float(v) for k, v in out.items()}


def threshold_free_metrics(labels: np.ndarray, probs: np.ndarray, bins: int = 10) -> dict[str, float]:
    """ROC-AUC, PR-AUC (average precision), Brier score, log loss and ECE; NaN when a class is absent."""
    from sklearn import metrics as skm

    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    both = bool((labels == 1).any() and (labels == 0).any())
    return {
        "roc_auc": float(skm.roc_auc_score(labels, probs)) if both else np.nan,
        "pr_auc": float(skm.average_precision_score(labels, probs)) if (labels == 1).any() else np.nan,
        "brier": float(skm.brier_score_loss(labels, probs, pos_label=1)),
        "log_loss": float(skm.log_loss(labels, np.clip(probs, _EPS, 1 - _EPS), labels=[0, 1])),
        "ece": expected_calibration_error(labels, probs, bins),
    }


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error of the pneumonia probability with ``bins`` equal-width bins.

    ECE = sum over bins of (share of images in the bin) x |observed pneumonia rate - mean probability|.
    Bins are [k/bins, (k+1)/bins) and a probability of exactly 1 has its own bin, as in torchmetrics'
    ``binary_calibration_error`` (the tests check it against that; torchmetrics' float edges differ from
    k/bins by one ulp for some k, so a probability lying exactly on an edge may fall in the next bin there).
    """
    labels = np.asarray(labels, dtype=np.float64)
    probs = np.asarray(probs, dtype=np.float64)
    return float(weighted_metrics(labels, probs, {}, np.ones((1, len(labels))), bins)["ece"][0])


def calibration_bins(labels: np.ndarray, probs: np.ndarray, bins: int = 10) -> dict[str, list[float]]:
    """Per non-empty bin: lower and upper edge, count, mean probability and observed pneumonia rate (the
    reliability diagram, and the ECE's terms: ECE = sum of count / total x |observed rate - mean probability|)."""
    labels = np.asarray(labels, dtype=np.float64)
    probs = np.asarray(probs, dtype=np.float64)
    index = _bin_index(probs, bins)
    count = np.bincount(index, minlength=bins + 1).astype(np.float64)
    mean_p = np.bincount(index, probs, minlength=bins + 1) / np.maximum(count, 1)
    rate = np.bincount(index, labels, minlength=bins + 1) / np.maximum(count, 1)
    # The bin of p == 1 is folded into the last one for display.
    count[bins - 1] += count[bins]
    edges = np.arange(bins) / bins
    keep = count[:bins] > 0
    return {"lower": edges[keep].tolist(), "upper": (edges + 1 / bins)[keep].round(12).tolist(),
            "count": count[:bins][keep].tolist(),
            "mean_probability": mean_p[:bins][keep].tolist(), "observed_rate": rate[:bins][keep].tolist()}


def _bin_index(probs: np.ndarray, bins: int) -> np.ndarray:
    edges = np.arange(bins + 1) / bins  # k / bins correctly rounded, so 0.6 is the edge of [0.6, 0.8)
    return np.clip(np.searchsorted(edges, probs, side="right") - 1, 0, bins)


def patient_bootstrap_weights(patient_ids: list[str] | np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """Integer weights (resamples x images): how often each image's patient was drawn in each resample.

    Patients, not images, are drawn with replacement (as many as there are patients), so all the images of
    one patient are in or out of a resample together; a weight of k stands for k copies of the image.
    """
    _, codes = np.unique(np.asarray(patient_ids, dtype=str), return_inverse=True)
    n_patients = int(codes.max()) + 1 if len(codes) else 0
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_patients, size=(resamples, n_patients))
    flat = (np.arange(resamples)[:, None] * n_patients + draws).ravel()
    counts = np.bincount(flat, minlength=resamples * n_patients).reshape(resamples, n_patients)
    return counts[:, codes].astype(np.float64)


def weighted_metrics(
    labels: np.ndarray,
    probs: np.ndarray,
    thresholds: dict[str, float],
    weights: np.ndarray,
    bins: int = 10,
) -> dict:
    """Every metric for every row of ``weights`` (B x N) at once; NaN where a resample makes it undefined.

    Returns ``{metric: (B,)}`` for the threshold-free metrics and ``{"at": {name: {metric: (B,)}}}`` for
    the thresholded ones, one entry per ``thresholds`` item.
    """
    y = np.asarray(labels, dtype=np.float64)
    p = np.asarray(probs, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    total = w.sum(axis=1)
    n_pos = w @ y
    n_neg = total - n_pos
    out: dict = {}
    with np.errstate(divide="ignore", invalid="ignore"):
        # Ranking metrics: group tied scores, then weighted sums per distinct score (ascending).
        order = np.argsort(p, kind="mergesort")
        sorted_p = p[order]
        starts = np.flatnonzero(np.r_[True, sorted_p[1:] != sorted_p[:-1]]) if len(p) else np.zeros(0, int)
        w_sorted = w[:, order]
        pos = np.add.reduceat(w_sorted * y[order], starts, axis=1) if len(p) else np.zeros((len(w), 0))
        neg = np.add.reduceat(w_sorted * (1 - y[order]), starts, axis=1) if len(p) else np.zeros((len(w), 0))
        neg_below = np.cumsum(neg, axis=1) - neg
        out["roc_auc"] = (pos * (neg_below + 0.5 * neg)).sum(axis=1) / (n_pos * n_neg)
        # Average precision: thresholds at each distinct score, descending.
        tp = np.cumsum(pos[:, ::-1], axis=1)
        fp = np.cumsum(neg[:, ::-1], axis=1)
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        out["pr_auc"] = (pos[:, ::-1] * precision).sum(axis=1) / n_pos
        out["brier"] = (w @ (p - y) ** 2) / total
        pc = np.clip(p, _EPS, 1 - _EPS)
        out["log_loss"] = (w @ -(y * np.log(pc) + (1 - y) * np.log(1 - pc))) / total
        onehot = np.zeros((len(p), bins + 1))
        onehot[np.arange(len(p)), _bin_index(p, bins)] = 1.0
        out["ece"] = np.abs(w @ (onehot * y[:, None]) - w @ (onehot * p[:, None])).sum(axis=1) / total
        out["at"] = {}
        for name, threshold in thresholds.items():
            called = (p >= threshold).astype(np.float64)
            tp_ = w @ (y * called)
            fp_ = w @ ((1 - y) * called)
            fn_ = n_pos - tp_
            tn_ = n_neg - fp_
            sens = tp_ / n_pos
            spec = tn_ / n_neg
            out["at"][name] = {
                "accuracy": (tp_ + tn_) / total,
                "sensitivity": sens,
                "specificity": spec,
                "ppv": tp_ / (tp_ + fp_),
                "npv": tn_ / (tn_ + fn_),
                "f1": 2 * tp_ / (2 * tp_ + fp_ + fn_),
                "balanced_accuracy": (sens + spec) / 2,
            }
    return out


def percentile_interval(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The percentile bootstrap interval of ``samples``, ignoring resamples where the metric is undefined."""
    finite = samples[np.isfinite(samples)]
    if finite.size == 0:
        return (float("nan"), float("nan"))
    alpha = (1 - level) / 2
    low, high = np.quantile(finite, [alpha, 1 - alpha])
    return float(low), float(high)

