"""Every figure of a report with its confidence interval, by a method chosen per metric, and the invariant
that no interval leaves out its own estimate.

- **Proportions** (accuracy, sensitivity, specificity, PPV, NPV): the exact Clopper-Pearson interval of
  the image counts, widened to the patient-bootstrap percentile interval where that is wider. Clopper-Pearson
  never collapses to zero width (203 of 203 gives [0.982, 1]), where the bootstrap of a proportion of 1 is
  [1, 1]; it counts images as independent, so where one patient's images agree the patient bootstrap is the
  wider, honest one, and the hull keeps it.
- **ECE**: its plug-in estimate is biased upward (a bin's |observed rate - mean probability| is positive
  on average even for a perfectly calibrated model), so a percentile interval of it can lie wholly above
  the estimate. The report gives the bootstrap bias-corrected estimate ``2 x plug-in - mean of resamples``
  with the basic bootstrap interval ``[2 x plug-in - q_high, 2 x plug-in - q_low]``, both cut at 0; the
  plug-in value is kept beside it.
- **The others** (F1, balanced accuracy, ROC-AUC, PR-AUC, Brier, log loss): the patient-bootstrap percentile
  interval, extended to reach the estimate where it does not (the figure says so).

:func:`checked` is the invariant: every interval goes through it, and it raises on one that leaves out
its estimate, so no report can show ``0.026 [0.027, 0.054]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pneumoscan.evaluation import metrics as M

CLOPPER_PEARSON = "Clopper-Pearson (images), widened to the patient bootstrap where wider"
BIAS_CORRECTED = "bootstrap bias-corrected estimate, basic bootstrap interval (patients)"
PERCENTILE = "percentile bootstrap (patients)"
EXTENDED = "percentile bootstrap (patients), extended to its estimate"

METHODS = {
    "proportions": f"{', '.join(('accuracy', 'sensitivity', 'specificity', 'PPV', 'NPV'))}: {CLOPPER_PEARSON}",
    "ece": f"ECE: {BIAS_CORRECTED}",
    "others": f"F1, balanced accuracy, ROC-AUC, PR-AUC, Brier, log loss: {PERCENTILE}",
}
"""How each kind of figure gets its interval (the report's ``bootstrap.method``)."""

# Proportions: metric -> (numerator, denominator) from the confusion counts.
PROPORTIONS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "accuracy": (("tp", "tn"), ("tp", "tn", "fp", "fn")),
    "sensitivity": (("tp",), ("tp", "fn")),
    "specificity": (("tn",), ("tn", "fp")),
    "ppv": (("tp",), ("tp", "fp")),
    "npv": (("tn",), ("tn", "fn")),
}
_SLACK = 1e-12  # float rounding between a metric and its interval's ends


class IntervalError(ValueError):
    """An interval that leaves out its own point estimate: a bug in the interval code, never shown."""


@dataclass(frozen=True)
class Estimate:
    """A metric's point estimate, its interval and how the interval was made (NaN where undefined)."""

    value: float
    low: float
    high: float
    method: str
    plug_in: float | None = None  # the uncorrected estimate, where the value is bias-corrected


def checked(metric: str, value: float, low: float, high: float) -> tuple[float, float, float]:
    """``(value, low, high)`` unchanged when ``low <= value <= high`` (or any is undefined); else raises."""
    if all(np.isfinite([value, low, high])) and not (low - _SLACK <= value <= high + _SLACK):
        raise IntervalError(f"{metric}: the interval [{low}, {high}] leaves out its estimate {value}")
    return value, low, high


def clopper_pearson(successes: int, trials: int, level: float = 0.95) -> tuple[float, float]:
    """The exact (Clopper-Pearson) interval of a binomial proportion; NaN for no trials."""
    from scipy.stats import beta

    if trials <= 0:
        return float("nan"), float("nan")
    alpha = 1 - level
    low = 0.0 if successes == 0 else float(beta.ppf(alpha / 2, successes, trials - successes + 1))
    high = 1.0 if successes == trials else float(beta.ppf(1 - alpha / 2, successes + 1, trials - successes))
    return low, high


def estimates(labels: np.ndarray, probs: np.ndarray, thresholds: dict[str, float], weights: np.ndarray,
              level: float = 0.95, bins: int = 10) -> dict:
    """Every metric of the report with its interval, from the patient-bootstrap ``weights`` (resamples x images).

    Returns ``{"threshold_free": {metric: Estimate}, "at": {point: {metric: Estimate}},
    "undefined": {metric: resamples where it was undefined}}``.
    """
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    samples = M.weighted_metrics(labels, probs, thresholds, weights, bins)
    free = M.threshold_free_metrics(labels, probs, bins)
    result: dict = {"threshold_free": {}, "at": {}, "undefined": {}}
    for metric in M.THRESHOLD_FREE_METRICS:
        make = _bias_corrected if metric == "ece" else _percentile
        result["threshold_free"][metric] = make(metric, free[metric], samples[metric], level)
        result["undefined"][metric] = int((~np.isfinite(samples[metric])).sum())
    for name, threshold in thresholds.items():
        point = M.threshold_metrics(labels, probs, threshold)
        counts = M.confusion(labels, probs, threshold)
        row = {}
        for metric, value in point.items():
            drawn = samples["at"][name][metric]
            if metric in PROPORTIONS:
                row[metric] = _exact(metric, value, counts, drawn, level)
            else:
                row[metric] = _percentile(metric, value, drawn, level)
            undefined = int((~np.isfinite(drawn)).sum())
            result["undefined"][metric] = max(result["undefined"].get(metric, 0), undefined)
        result["at"][name] = row
    return result


def _exact(metric: str, value: float, counts: dict[str, int], drawn: np.ndarray, level: float) -> Estimate:
    numerator, denominator = PROPORTIONS[metric]
    low, high = clopper_pearson(sum(counts[k] for k in numerator), sum(counts[k] for k in denominator), level)
    boot_low, boot_high = M.percentile_interval(drawn, level)
    if np.isfinite(boot_low):
        low, high = min(low, boot_low), max(high, boot_high)
    return Estimate(*checked(metric, value, low, high), CLOPPER_PEARSON)


def _percentile(metric: str, value: float, drawn: np.ndarray, level: float) -> Estimate:
    low, high = M.percentile_interval(drawn, level)
    method = PERCENTILE
    if np.isfinite(value) and np.isfinite(low) and not low <= value <= high:
        low, high, method = min(low, value), max(high, value), EXTENDED
    return Estimate(*checked(metric, value, low, high), method)


def _bias_corrected(metric: str, value: float, drawn: np.ndarray, level: float) -> Estimate:
    """Efron's bootstrap bias correction with the basic interval, for a metric that is >= 0 (the ECE)."""
    finite = drawn[np.isfinite(drawn)]
    if not np.isfinite(value) or finite.size == 0:
        return Estimate(value, float("nan"), float("nan"), BIAS_CORRECTED, value)
    q_low, q_high = M.percentile_interval(finite, level)
    # The bias of the plug-in is estimated by (mean of resamples - plug-in); the basic interval reflects the
    # resamples' spread around the plug-in. The mean lies between the quantiles, so the interval holds the
    # estimate; both are cut at 0, as the metric cannot be negative.
    corrected = max(0.0, 2 * value - float(finite.mean()))
    low, high = max(0.0, 2 * value - q_high), max(0.0, 2 * value - q_low)
    if not low <= corrected <= high:  # resamples so skewed that their mean lies outside their quantiles
        low, high = min(low, corrected), max(high, corrected)
    return Estimate(*checked(metric, corrected, low, high), BIAS_CORRECTED, value)
