"""Operating points and temperature scaling, chosen on VALIDATION data only.

Nothing here is ever given the split being evaluated: :func:`pneumoscan.evaluation.evaluate` passes the
run's validation predictions, and the tests check that the evaluated split cannot move a threshold.
"""

from __future__ import annotations

import numpy as np

from pneumoscan.errors import DatasetError
from pneumoscan.models.artifact import OPERATING_POINTS

# The point that no data chooses: 0.5 on the (temperature-scaled, which keeps 0.5) probability.
BALANCED_THRESHOLD = 0.5


POINT_NAMES: tuple[str, ...] = tuple(OPERATING_POINTS)


def choose_operating_points(labels: np.ndarray, probs: np.ndarray, seed: int = 0) -> dict[str, float]:
    """Thresholds for Youden's J (and its bootstrap median), sensitivity 0.95 and specificity 0.95 on the
    given (validation) scores."""
    from sklearn.metrics import roc_curve

    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    if not ((labels == 1).any() and (labels == 0).any()):
        raise DatasetError("validation predictions hold one class only; operating points need both classes")
    fpr, tpr, thresholds = roc_curve(labels, probs, drop_intermediate=False)
    # roc_curve's first threshold is +inf (nothing called positive). It is kept, as the smallest number
    # above every score, only where no real threshold reaches specificity 0.95.
    thresholds = thresholds.copy()
    thresholds[0] = np.nextafter(probs.max(), np.inf)
    j = tpr[1:] - fpr[1:]
    youden = thresholds[1:][int(np.argmax(j))]
    sens95 = thresholds[int(np.flatnonzero(tpr >= 0.95)[0])]
    spec95 = thresholds[int(np.flatnonzero(fpr <= 0.05)[-1])]
    return {"youden": float(youden), "youden-median": median_youden(labels, probs, seed=seed), "sens95": float(sens95),
            "sens95-median": target_sensitivity_threshold(labels, probs, 0.95, resamples=200, seed=seed)[0],
            "spec95": float(spec95), "balanced": BALANCED_THRESHOLD}


def median_youden(labels: np.ndarray, probs: np.ndarray, resamples: int = 200, seed: int = 0) -> float:
    """The median, over bootstrap resamples of the (validation) images, of the Youden threshold.

    Where validation is nearly separable, every threshold in the gap between the classes has the same
    J and the single best one sits at an edge of the gap, which moves from seed to seed (measured: 0.24
    and 0.65 for two seeds of one recipe). The median over resamples sits inside the gap and is stable.

    Each resample's point is what ``sklearn.metrics.roc_curve`` (``drop_intermediate=False``) gives it:
    the highest of the scores present with maximal J, and the next lower score present. All resamples are
    counted at once, as multiplicities of the distinct scores (the tests check it against ``roc_curve``).
    """
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    rng = np.random.default_rng(seed)
    # One draw per resample, in this order: the same images as drawing them one resample at a time.
    draws = np.array([rng.integers(0, len(labels), len(labels)) for _ in range(resamples)], dtype=np.int64)
    descending, score_of = np.unique(-probs, return_inverse=True)
    scores = -descending  # the distinct scores, highest first: roc_curve's thresholds after its +inf
    # A block of resamples at a time keeps the (resamples x distinct scores) counts small.
    block = max(1, 2_000_000 // max(1, len(scores)))
    blocks = (draws[i:i + block] for i in range(0, resamples, block))
    middles = np.concatenate([np.zeros(0), *(_youden_gap_middles(labels[rows], score_of[rows], scores)
                                             for rows in blocks)])
    if not len(middles):
        raise DatasetError("validation predictions hold one class only; operating points need both classes")
    return float(1.0 / (1.0 + np.exp(-np.median(middles))))


def _youden_gap_middles(labels: np.ndarray, score_index: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """For each resample with both classes (a row of its images' ``labels`` and the ``score_index`` of
    their scores in ``scores``), the logit-space middle of the gap below its Youden threshold."""
    count, distinct = score_index.shape[0], len(scores)
    cells = (np.arange(count)[:, None] * distinct + score_index).ravel()
    images = np.bincount(cells, minlength=count * distinct).reshape(count, distinct).astype(np.float64)
    positives = np.bincount(cells, weights=labels.ravel().astype(np.float64),
                            minlength=count * distinct).reshape(count, distinct)
    true_pos, false_pos = positives.cumsum(axis=1), (images - positives).cumsum(axis=1)
    both = (true_pos[:, -1] > 0) & (false_pos[:, -1] > 0)  # a one-class resample has no ROC curve
    true_pos, false_pos, present = true_pos[both], false_pos[both], images[both] > 0
    # J at each score present in the resample, as roc_curve computes it; absent scores are not thresholds.
    j = np.where(present, true_pos / true_pos[:, -1:] - false_pos / false_pos[:, -1:], -np.inf)
    best = np.argmax(j, axis=1)  # the first maximum: the highest such threshold, as roc_curve's argmax
    # The next lower score present: the first present index after `best`, else `best` (the lowest score).
    present_index = np.where(present, np.arange(distinct), distinct)
    first_present_from = np.minimum.accumulate(present_index[:, ::-1], axis=1)[:, ::-1]
    after = np.concatenate([first_present_from[:, 1:], np.full((len(best), 1), distinct)], axis=1)
    below = after[np.arange(len(best)), best]
    below = np.where(below < distinct, below, best)
    # Youden's threshold is the lowest score called positive; the boundary lies anywhere between it and
    # the next lower score. Take the middle of that gap, in logit space, not its top edge.
    return (logit(scores[best]) + logit(scores[below])) / 2


def target_sensitivity_threshold(labels: np.ndarray, probs: np.ndarray, target: float,
                                 patients: np.ndarray | list[str] | None = None, resamples: int = 200,
                                 seed: int = 0) -> tuple[float, tuple[float, float]]:
    """The highest threshold whose sensitivity reaches ``target``: the median over bootstrap resamples
    (of ``patients`` when given, else of images), with its 95 % percentile interval.

    A fixed sensitivity is how a triage operating point is specified; the median over resamples keeps
    one unlucky positive image from moving it.
    """
    from pneumoscan.evaluation.metrics import patient_bootstrap_weights, percentile_interval

    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    units = np.asarray(patients, dtype=str) if patients is not None else np.arange(len(labels)).astype(str)
    picks = []
    for weights in patient_bootstrap_weights(units, resamples, seed):
        positive = (labels == 1) & (weights > 0)
        if not positive.any() or not ((labels == 0) & (weights > 0)).any():
            continue
        scores, w = probs[positive], weights[positive]
        order = np.argsort(-scores)
        covered = np.cumsum(w[order]) / w.sum()
        picks.append(float(scores[order][int(np.searchsorted(covered, target - 1e-12))]))
    if not picks:
        raise DatasetError("no bootstrap resample held both classes; operating points need both classes")
    return float(np.median(picks)), percentile_interval(np.array(picks), 0.95)


def fit_temperature(labels: np.ndarray, probs: np.ndarray, sample_weight: np.ndarray | None = None) -> float:
    """The temperature T that minimises the (weighted) log loss of ``sigmoid(logit(probs) / T)`` on these labels.

    Temperature scaling is a one-weight logistic regression without intercept on the logit, so it is
    fitted with scikit-learn's ``LogisticRegression`` without penalty (C = inf); T = 1 / weight.
    """
    from sklearn.linear_model import LogisticRegression

    labels = np.asarray(labels, dtype=np.int64)
    if not ((labels == 1).any() and (labels == 0).any()):
        raise DatasetError("validation predictions hold one class only; temperature scaling needs both classes")
    z = logit(probs)[:, None]
    fitted = LogisticRegression(C=np.inf, fit_intercept=False).fit(z, labels, sample_weight=sample_weight)
    weight = float(fitted.coef_[0, 0])
    if weight <= 0:
        raise DatasetError("validation scores are anti-correlated with the labels; temperature scaling refused")
    return 1.0 / weight


def balanced_class_weights(labels: np.ndarray) -> tuple[float, float]:
    """(NORMAL, PNEUMONIA) weights that give both classes the same total weight: inverse class frequency,
    normalised so that a balanced set has weights (1, 1), as Keras' ``class_weight``."""
    share = float(np.mean(np.asarray(labels, dtype=np.float64)))
    return 0.5 / (1.0 - share), 0.5 / share


def balanced_weights(labels: np.ndarray) -> np.ndarray:
    """Per-image weights that give both classes the same total weight (a balanced population)."""
    labels = np.asarray(labels, dtype=np.int64)
    return np.asarray(balanced_class_weights(labels))[labels]


def logit(probs: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1 - 1e-12)
    return np.log(p) - np.log1p(-p)


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Rescale probabilities by a temperature: ``sigmoid(logit(p) / T)`` (ranking unchanged)."""
    return 1.0 / (1.0 + np.exp(-logit(probs) / temperature))
