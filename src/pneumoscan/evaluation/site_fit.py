"""The statistics of a site calibration: a temperature and a threshold fitted on a small labelled sample.

A sample of a few dozen images says little, and a good model often separates it perfectly: fitted
without restraint, such a sample asks for a temperature near 0 (every probability 0 or 1) and a
threshold at the highest pneumonia score (the "always NORMAL" model). So the fit is restrained:

- **Patients, not images**: every patient weighs 1 in each class it has images of (each of its k images
  of a class weighs 1/k), in every count, test and fit below. Twenty images of one patient are one
  piece of evidence, not twenty.
- **Temperature**: the maximum a posteriori fit with a log-normal prior centred on the model's own
  temperature, bounded to [0.5, 2] x that temperature. A perfectly separated sample has no maximum
  likelihood (it only says "sharper"), so it keeps the model's own temperature, and says so.
- **Threshold**: the sample's estimate for the target sensitivity is the median over patient-bootstrap
  resamples of a point interpolated between the classes' scores (the middle, in logit space, of the gap
  below the last pneumonia score needed), with its 95 % interval. The model's own threshold is replaced
  only where the sample shows, with one-sided 95 % (Clopper-Pearson, on pneumonia patients) confidence,
  that it misses the target (the threshold is then lowered to the estimate), or that a higher threshold
  still reaches it (raised to the highest such point). Otherwise the sample cannot support a change (too
  few pneumonia patients near the boundary) and the model's own threshold is kept, with the reason.
- A sample with fewer than :data:`MIN_PER_CLASS` patients of a class is refused.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from pneumoscan.errors import DatasetError
from pneumoscan.evaluation import metrics as M
from pneumoscan.evaluation.intervals import clopper_pearson
from pneumoscan.evaluation.operating import logit

MIN_PER_CLASS = 20  # patients of each class a sample must hold: below it a threshold is guesswork
TEMPERATURE_BOUNDS = (0.5, 2.0)  # x the model's own temperature
# The prior's standard deviation on log T: the bounds lie two of them away from the model's own.
PRIOR_SIGMA = math.log(2.0) / 2
CONFIDENCE = 0.95  # one-sided, for "the sample shows the threshold misses / still reaches the target"
THRESHOLD_LIMITS = (0.01, 0.99)  # a site threshold outside these is clamped to them


@dataclass(frozen=True)
class SiteCalibration:
    """What was fitted on the site's sample, in the calibrated model's probability space."""

    threshold: float  # the threshold adopted: the model's own (converted) or the sample's
    threshold_source: str  # "model" (kept) or "site" (moved by the sample)
    threshold_reason: str  # why, in one sentence
    threshold_estimate: float  # the sample's own estimate for the target, adopted or not
    threshold_interval: tuple[float, float]  # its 95 % patient-bootstrap interval
    model_threshold: float  # the model's own threshold, in the calibrated probability space
    temperature: float  # applied to the network's raw logit (replaces the model's own temperature)
    model_temperature: float
    temperature_bounds: tuple[float, float]
    temperature_note: str
    separable: bool  # every pneumonia image of the sample scores above every normal one
    target_sensitivity: float
    images: int
    patients: int
    normal: int  # images
    pneumonia: int
    normal_patients: int
    pneumonia_patients: int
    pneumonia_at_model_threshold: float  # pneumonia patients (1/k per image of k) at or above the model's threshold
    sensitivity_at_model_threshold: float
    sensitivity_at_model_threshold_interval: tuple[float, float]  # two-sided 90 % (one-sided 95 % each way)
    sensitivity: float  # per patient, on the sample, at ``threshold`` (optimistic: the sample chose or checked it)
    specificity: float
    resamples: int
    seed: int
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def patient_weights(labels: np.ndarray, patients: np.ndarray) -> np.ndarray:
    """Each image's weight: 1 / (the images of its patient with its label), so a patient weighs 1 per class."""
    keys = np.char.add(np.char.add(np.asarray(patients, dtype=str), "\0"), np.asarray(labels).astype(str))
    _, codes, sizes = np.unique(keys, return_inverse=True, return_counts=True)
    return 1.0 / sizes[codes]


def fit_site_calibration(labels: np.ndarray, raw_probs: np.ndarray, patients: np.ndarray | list[str],
                         target_sensitivity: float = 0.95, resamples: int = 1000, seed: int = 0, *,
                         model_temperature: float = 1.0, model_threshold: float = 0.5) -> SiteCalibration:
    """Fit a temperature and a target-sensitivity threshold on a site's labelled sample, restrained by the
    model's own, every patient weighing the same (see the module's docstring).

    ``raw_probs`` are ``sigmoid(raw logit)`` (temperature 1); ``model_temperature`` and
    ``model_threshold`` are the model file's (its threshold applies to ``sigmoid(raw logit /
    model_temperature)``). Raises :class:`DatasetError` for a sample below :data:`MIN_PER_CLASS` patients
    of a class, or one the model ranks backwards.
    """
    labels = np.asarray(labels, dtype=np.int64)
    raw = logit(np.asarray(raw_probs, dtype=np.float64))
    units = np.asarray(patients, dtype=str)
    counts = np.bincount(labels, minlength=2)
    per_class = [len(set(units[labels == c].tolist())) for c in (0, 1)]
    if not 0.0 < target_sensitivity < 1.0:
        raise DatasetError(f"--target-sensitivity must be between 0 and 1, not {target_sensitivity}")
    if counts.min() == 0:
        present = "NORMAL" if counts[0] else "PNEUMONIA"
        raise DatasetError(f"the calibration sample holds only {present} images ({int(counts.max())}); calibrate "
                           f"needs both classes, at least {MIN_PER_CLASS} patients of each")
    if min(per_class) < MIN_PER_CLASS:
        raise DatasetError(f"the calibration sample holds {int(counts[0])} NORMAL and {int(counts[1])} PNEUMONIA "
                           f"images of {per_class[0]} and {per_class[1]} patients; calibrate needs at least "
                           f"{MIN_PER_CLASS} patients of each class")
    if not model_temperature > 0:
        raise DatasetError(f"the model's temperature must be positive, not {model_temperature}")
    from sklearn.metrics import roc_auc_score

    weights = patient_weights(labels, units)
    auc = float(roc_auc_score(labels, raw, sample_weight=weights))
    if auc <= 0.5:
        raise DatasetError(f"the model ranks this sample no better than chance (ROC-AUC {auc:.3f}): check its "
                           "labels; calibration moves a threshold and a temperature, it cannot fix a ranking")
    separable = bool(raw[labels == 1].min() > raw[labels == 0].max())
    notes = []
    if separable:
        notes.append("the sample is perfectly separated by the model's scores (every PNEUMONIA image above every "
                     "NORMAL one): it shows the model ranks well here, but not where the boundary lies nor how "
                     "sharp the probabilities should be; it is not obeyed")
    temperature, temperature_note = fit_site_temperature(labels, raw, model_temperature, separable, weights)
    scaled = raw / temperature
    own = float(logit(np.array([model_threshold]))[0]) * model_temperature / temperature
    estimate, interval = smooth_sensitivity_threshold(labels, scaled, target_sensitivity, units, resamples, seed,
                                                      weights)
    decision = _choose_threshold(labels, scaled, own, estimate, target_sensitivity, weights)
    threshold, source, reason, at_own, at_own_interval = decision
    detected = scaled >= threshold
    positive = labels == 1
    return SiteCalibration(
        threshold=_sigmoid(threshold), threshold_source=source, threshold_reason=reason,
        threshold_estimate=_sigmoid(estimate), threshold_interval=(_sigmoid(interval[0]), _sigmoid(interval[1])),
        model_threshold=_sigmoid(own), temperature=float(temperature), model_temperature=float(model_temperature),
        temperature_bounds=(TEMPERATURE_BOUNDS[0] * model_temperature, TEMPERATURE_BOUNDS[1] * model_temperature),
        temperature_note=temperature_note, separable=separable, target_sensitivity=float(target_sensitivity),
        images=len(labels), patients=len(set(units.tolist())), normal=int(counts[0]), pneumonia=int(counts[1]),
        normal_patients=per_class[0], pneumonia_patients=per_class[1],
        pneumonia_at_model_threshold=at_own, sensitivity_at_model_threshold=at_own / per_class[1],
        sensitivity_at_model_threshold_interval=at_own_interval,
        sensitivity=float(weights[positive & detected].sum() / weights[positive].sum()),
        specificity=float(weights[~positive & ~detected].sum() / weights[~positive].sum()),
        resamples=resamples, seed=seed, notes=notes,
    )


def fit_site_temperature(labels: np.ndarray, raw_logits: np.ndarray, model_temperature: float,
                         separable: bool, weights: np.ndarray | None = None) -> tuple[float, str]:
    """(temperature, how it was chosen): the maximum a posteriori temperature of ``sigmoid(raw / T)``
    (each image's log-likelihood times its ``weights``, default 1) under a log-normal prior centred on
    ``model_temperature``, within ``TEMPERATURE_BOUNDS`` x it; the model's own for a perfectly separated
    sample (whose likelihood only grows as T falls to 0)."""
    low, high = (b * model_temperature for b in TEMPERATURE_BOUNDS)
    if separable:
        return float(model_temperature), (f"the model's own ({model_temperature:.3f}): a perfectly separated sample "
                                          "has no best temperature (its likelihood grows as the temperature falls to 0)")
    from scipy.optimize import minimize_scalar

    signs = np.where(np.asarray(labels) == 1, 1.0, -1.0)
    w = np.ones(len(signs)) if weights is None else np.asarray(weights, dtype=np.float64)
    centre = math.log(model_temperature)

    def posterior(log_t: float) -> float:
        margins = signs * raw_logits / math.exp(log_t)
        return float((w * np.logaddexp(0.0, -margins)).sum() + (log_t - centre) ** 2 / (2 * PRIOR_SIGMA**2))

    fitted = minimize_scalar(posterior, bounds=(math.log(low), math.log(high)), method="bounded",
                             options={"xatol": 1e-6})
    temperature = float(math.exp(fitted.x))
    edge = " (at its bound)" if min(abs(temperature - low), abs(temperature - high)) < 1e-4 * model_temperature else ""
    return temperature, (f"maximum a posteriori fit on the sample{edge}, prior log-normal around the model's own "
                         f"{model_temperature:.3f} (sd log 2 / 2), bounded to [{low:.3f}, {high:.3f}]")


def smooth_sensitivity_threshold(labels: np.ndarray, scores: np.ndarray, target: float, patients: np.ndarray,
                                 resamples: int, seed: int, image_weights: np.ndarray | None = None
                                 ) -> tuple[float, tuple[float, float]]:
    """The sample's threshold for ``target`` sensitivity, in the logit space of ``scores``, and its 95 % interval.

    In each patient-bootstrap resample, the pneumonia images are counted from the highest score down
    until they cover ``target`` of the resample's pneumonia weight (an image weighs its patient's draws
    times ``image_weights``, default 1); every threshold between that image's score and the next lower
    score of the resample (either class) has the same sensitivity, and the resample's point is the middle
    of that gap (the score itself when nothing scores lower). The estimate is the median of the
    resamples' points; the interval their 2.5 and 97.5 percentiles.
    """
    labels = np.asarray(labels, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    weights = M.patient_bootstrap_weights(patients, resamples, seed)
    if image_weights is not None:
        weights = weights * np.asarray(image_weights, dtype=np.float64)[None, :]
    order = np.argsort(-scores, kind="stable")
    labels, scores, weights = labels[order], scores[order], weights[:, order]
    positive = labels == 1
    pos_weight = weights * positive
    total = pos_weight.sum(axis=1)
    usable = (total > 0) & ((weights * ~positive).sum(axis=1) > 0)
    pos_weight, weights, total = pos_weight[usable], weights[usable], total[usable]
    if not len(total):
        raise DatasetError("no bootstrap resample held both classes; a threshold needs both classes")
    covered = np.cumsum(pos_weight, axis=1) / total[:, None]
    # The first image (highest score first) at which the target is covered; only pneumonia images raise it.
    boundary = np.argmax(covered >= target - 1e-12, axis=1)
    present = weights > 0
    rows = np.arange(len(boundary))
    points = np.empty(len(boundary))
    for row, b in zip(rows, boundary, strict=True):
        lower = np.flatnonzero(present[row, b + 1:] & (scores[b + 1:] < scores[b]))
        points[row] = (scores[b] + scores[b + 1 + lower[0]]) / 2 if len(lower) else scores[b]
    low, high = M.percentile_interval(points, 0.95)
    return float(np.median(points)), (low, high)


def _choose_threshold(labels: np.ndarray, scores: np.ndarray, own: float, estimate: float,
                      target: float, weights: np.ndarray) -> tuple[float, str, str, float, tuple[float, float]]:
    """(threshold, source, reason, pneumonia patients at own, sensitivity interval at own), in logit space."""
    pos = labels == 1
    order = np.argsort(-scores[pos], kind="stable")
    positives, weight = scores[pos][order], weights[pos][order]
    n = float(weight.sum())  # pneumonia patients
    k = float(weight[positives >= own].sum())
    at_own = clopper_pearson(k, n, level=2 * CONFIDENCE - 1)  # two one-sided CONFIDENCE bounds
    shown = (f"{_count(k)} of {_count(n)} PNEUMONIA patients of the sample score at or above it (sensitivity "
             f"{k / n:.3f}, one-sided {CONFIDENCE:.0%} bounds {at_own[0]:.3f}-{at_own[1]:.3f})")
    if at_own[1] < target:
        threshold = min(estimate, own)
        return (*_clamped(threshold, "site", f"the sample shows the model's own threshold misses sensitivity "
                                             f"{target:g}: {shown}; lowered to the sample's estimate"), k, at_own)
    # Raising gives up pneumonia patients: only as far as the sample still shows the target, by the
    # one-sided lower bound of the patients covered by the highest-scoring images.
    covered = np.cumsum(weight)
    from scipy.stats import beta

    demonstrable = np.flatnonzero(beta.ppf(1 - CONFIDENCE, covered, n - covered + 1) >= target)
    if len(demonstrable) and covered[demonstrable[0]] < k - 1e-9:
        j = int(demonstrable[0])
        below = scores[scores < positives[j]]
        point = (positives[j] + below.max()) / 2 if len(below) else positives[j]
        threshold = min(point, estimate)
        if threshold > own:
            return (*_clamped(threshold, "site", f"the sample shows sensitivity {target:g} is still reached above the "
                                                 f"model's own threshold: {_count(covered[j])} of {_count(n)} "
                                                 "PNEUMONIA patients at or above the new one"), k, at_own)
    why = (f"the sample cannot support another threshold for sensitivity {target:g} (too few PNEUMONIA patients "
           f"near the boundary): {shown}")
    if not len(demonstrable):
        why += f"; showing it at a higher threshold needs at least {_needed(target)} PNEUMONIA patients"
    return own, "model", why + "; the model's own threshold is kept", k, at_own


def _count(x: float) -> str:
    return f"{x:.0f}" if abs(x - round(x)) < 1e-9 else f"{x:.1f}"


def _clamped(threshold: float, source: str, reason: str) -> tuple[float, str, str]:
    low, high = (float(logit(np.array([t]))[0]) for t in THRESHOLD_LIMITS)
    if threshold < low or threshold > high:
        clamp = low if threshold < low else high
        return clamp, source, reason + (f" (clamped from {_sigmoid(threshold):.4f} to "
                                        f"{_sigmoid(clamp):.2f}: a site threshold stays in {THRESHOLD_LIMITS})")
    return threshold, source, reason


def _needed(target: float) -> int:
    """The fewest pneumonia patients that, all detected, show ``target`` with one-sided 95 % confidence."""
    return math.ceil(math.log(1 - CONFIDENCE) / math.log(target))


def _sigmoid(z: float) -> float:
    return float(1.0 / (1.0 + np.exp(-np.float64(z))))
