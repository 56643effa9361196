"""Metrics against scikit-learn / torchmetrics, and the patient bootstrap against known cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm

from helpers.properties import examples
from pneumoscan.evaluation import metrics as M

EPS = np.finfo(np.float64).eps  # probabilities of exactly 0 or 1 are clipped for the log loss


@st.composite
def scored_labels(draw, min_size: int = 4, max_size: int = 60):
    """Labels with both classes and probabilities with ties (rounded) and exact 0 / 1 values."""
    n = draw(st.integers(min_size, max_size))
    labels = np.array(draw(st.lists(st.integers(0, 1), min_size=n, max_size=n)))
    labels[0], labels[1] = 0, 1
    probs = np.array(draw(st.lists(st.floats(0, 1), min_size=n, max_size=n)))
    decimals = draw(st.sampled_from([1, 2, 6]))
    return labels, np.round(probs, decimals)


def reference(labels, probs, threshold):
    """Every metric straight from scikit-learn's public functions, on plain (unweighted) data."""
    pred = (probs >= threshold).astype(int)
    (tn, fp), (fn, tp) = skm.confusion_matrix(labels, pred, labels=[0, 1])
    nan = np.nan
    return {
        "accuracy": skm.accuracy_score(labels, pred),
        "sensitivity": tp / (tp + fn),
        "specificity": tn / (tn + fp),
        "ppv": tp / (tp + fp) if tp + fp else nan,
        "npv": tn / (tn + fn) if tn + fn else nan,
        "f1": skm.f1_score(labels, pred, zero_division=nan),
        "balanced_accuracy": skm.balanced_accuracy_score(labels, pred),
        "roc_auc": skm.roc_auc_score(labels, probs),
        "pr_auc": skm.average_precision_score(labels, probs),
        "brier": skm.brier_score_loss(labels, probs),
        "log_loss": skm.log_loss(labels, np.clip(probs, EPS, 1 - EPS), labels=[0, 1]),
    }


def assert_close(actual: dict, expected: dict, keys) -> None:
    for key in keys:
        a, e = float(actual[key]), float(expected[key])
        if np.isnan(e):
            assert np.isnan(a), key
        else:
            assert a == pytest.approx(e, abs=1e-9), key


@settings(max_examples=examples(40), deadline=None)
@given(data=scored_labels(), threshold=st.floats(0.05, 0.95))
def test_point_metrics_equal_scikit_learn(data, threshold):
    labels, probs = data
    expected = reference(labels, probs, threshold)
    assert_close(M.threshold_metrics(labels, probs, threshold), expected, M.THRESHOLD_METRICS)
    assert_close(M.threshold_free_metrics(labels, probs), expected, ("roc_auc", "pr_auc", "brier", "log_loss"))


@settings(max_examples=examples(25), deadline=None)
@given(data=scored_labels(), threshold=st.floats(0.05, 0.95), seed=st.integers(0, 1000))
def test_vectorised_bootstrap_metrics_equal_scikit_learn_on_each_resample(data, threshold, seed):
    labels, probs = data
    patients = np.arange(len(labels)) // 2  # two images per patient
    weights = M.patient_bootstrap_weights(patients.astype(str), 5, seed)
    fast = M.weighted_metrics(labels, probs, {"t": threshold}, weights)
    for b, row in enumerate(weights):
        rows = np.repeat(np.arange(len(labels)), row.astype(int))  # the resample, spelled out
        y, p = labels[rows], probs[rows]
        if len(set(y)) < 2:
            assert np.isnan(fast["roc_auc"][b])
            continue
        expected = reference(y, p, threshold)
        got = {**{k: fast[k][b] for k in M.THRESHOLD_FREE_METRICS}, **{k: v[b] for k, v in fast["at"]["t"].items()}}
        assert_close(got, expected, [*M.THRESHOLD_METRICS, "roc_auc", "pr_auc", "brier", "log_loss"])
        assert got["ece"] == pytest.approx(M.expected_calibration_error(y, p), abs=1e-9)


@settings(max_examples=examples(40), deadline=None)
@given(data=scored_labels(), bins=st.integers(2, 20))
def test_ece_equals_torchmetrics_binary_calibration_error(data, bins):
    labels, probs = data
    # Off the bin edges: torchmetrics' edges (torch.linspace) are k/bins only to within one ulp.
    probs = np.where(np.abs(probs * bins - np.round(probs * bins)) < 1e-6, probs + 1e-4, probs).clip(0, 1)
    from torchmetrics.functional.classification import binary_calibration_error  # 1 s to import: here only

    expected = binary_calibration_error(torch.tensor(probs, dtype=torch.float64), torch.tensor(labels), n_bins=bins)
    assert M.expected_calibration_error(labels, probs, bins) == pytest.approx(float(expected), abs=1e-9)


def test_ece_on_a_hand_checked_case():
    # Bin [0.2, 0.3): probabilities .2, .2, rate 1/2 -> |0.5 - 0.2| = 0.3, weight 2/4.
    # Bin [0.9, 1.0): probabilities .9, .9, rate 1   -> |1 - 0.9| = 0.1, weight 2/4.
    labels = np.array([0, 1, 1, 1])
    probs = np.array([0.2, 0.2, 0.9, 0.9])
    assert M.expected_calibration_error(labels, probs, bins=10) == pytest.approx(0.5 * 0.3 + 0.5 * 0.1)


def test_ece_bins_are_closed_on_the_left():
    # 0.6 is the lower edge of [0.6, 0.8) with 5 bins: alone in its bin, |1 - 0.6| = 0.4, weight 1/2;
    # 0.5 alone in [0.4, 0.6): |0 - 0.5| = 0.5, weight 1/2.
    assert M.expected_calibration_error(np.array([0, 1]), np.array([0.5, 0.6]), bins=5) == pytest.approx(0.45)


def test_patient_bootstrap_keeps_a_patients_images_together():
    patients = np.array(["a", "a", "a", "b", "c", "c", "d"])
    weights = M.patient_bootstrap_weights(patients, 500, seed=3)
    for pid in set(patients):
        cols = weights[:, patients == pid]
        assert (cols == cols[:, :1]).all(), pid
    # As many patients drawn as there are: the weight of each patient's first image sums to 4.
    first = [list(patients).index(p) for p in "abcd"]
    assert (weights[:, first].sum(axis=1) == 4).all()


def test_bootstrap_is_reproducible_with_its_seed():
    patients = np.arange(40).astype(str)
    a = M.patient_bootstrap_weights(patients, 50, seed=7)
    assert np.array_equal(a, M.patient_bootstrap_weights(patients, 50, seed=7))
    assert not np.array_equal(a, M.patient_bootstrap_weights(patients, 50, seed=8))


def percentile_intervals(labels, probs, patients, thresholds, resamples, seed) -> dict:
    """The patient-bootstrap percentile interval of every metric, and how many resamples left each undefined."""
    samples = M.weighted_metrics(labels, probs, thresholds, M.patient_bootstrap_weights(patients, resamples, seed))
    return {"threshold_free": {m: M.percentile_interval(samples[m]) for m in M.THRESHOLD_FREE_METRICS},
            "at": {t: {m: M.percentile_interval(v) for m, v in row.items()} for t, row in samples["at"].items()},
            "undefined": {m: int((~np.isfinite(samples[m])).sum()) for m in M.THRESHOLD_FREE_METRICS}}


def test_bootstrap_of_a_perfect_classifier_is_one_to_one():
    labels = np.array([0] * 30 + [1] * 30)
    probs = np.where(labels == 1, 0.9, 0.1)
    ci = percentile_intervals(labels, probs, np.arange(60).astype(str), {"t": 0.5}, resamples=300, seed=0)
    for metric in ("accuracy", "sensitivity", "specificity", "ppv", "npv", "f1", "balanced_accuracy"):
        assert ci["at"]["t"][metric] == (1.0, 1.0), metric
    assert ci["threshold_free"]["roc_auc"] == (1.0, 1.0)
    assert ci["threshold_free"]["pr_auc"] == (1.0, 1.0)


def binomial_quantile(q: float, n: int, p: float) -> int:
    """The smallest k with P(Binomial(n, p) <= k) >= q (exact, from the probability mass function)."""
    total = 0.0
    for k in range(n + 1):
        total += math.comb(n, k) * p**k * (1 - p) ** (n - k)
        if total >= q:
            return k
    return n


def test_bootstrap_accuracy_interval_matches_the_binomial_distribution():
    # One image per patient: the resampled accuracy is Binomial(n, p) / n exactly, so the percentile
    # interval must sit on the binomial's 2.5% and 97.5% quantiles (to one step of 1/n).
    n, correct = 50, 40
    labels = np.ones(n, dtype=int)
    probs = np.r_[np.full(correct, 0.9), np.full(n - correct, 0.1)]
    ci = percentile_intervals(labels, probs, np.arange(n).astype(str), {"t": 0.5}, resamples=20_000, seed=1)
    low, high = ci["at"]["t"]["accuracy"]
    assert low == pytest.approx(binomial_quantile(0.025, n, correct / n) / n, abs=1 / n + 1e-9)
    assert high == pytest.approx(binomial_quantile(0.975, n, correct / n) / n, abs=1 / n + 1e-9)


def test_resampling_patients_widens_the_interval_when_a_patients_images_agree():
    # 20 patients x 5 images, each patient all right or all wrong: the honest interval is that of
    # 20 observations, not 100; resampling images would make it about sqrt(5) times narrower.
    labels = np.ones(100, dtype=int)
    probs = np.repeat(np.r_[np.full(14, 0.9), np.full(6, 0.1)], 5)
    by_patient = percentile_intervals(labels, probs, np.repeat(np.arange(20), 5).astype(str), {"t": 0.5},
                                      resamples=4000, seed=0)["at"]["t"]["accuracy"]
    by_image = percentile_intervals(labels, probs, np.arange(100).astype(str), {"t": 0.5},
                                    resamples=4000, seed=0)["at"]["t"]["accuracy"]
    assert (by_patient[1] - by_patient[0]) > 1.8 * (by_image[1] - by_image[0])


def test_undefined_resamples_are_counted_not_hidden():
    labels = np.array([0, 0, 0, 1])  # one positive patient: often absent from a resample
    probs = np.array([0.1, 0.2, 0.3, 0.8])
    ci = percentile_intervals(labels, probs, np.array(list("abcd")), {"t": 0.5}, resamples=400, seed=0)
    assert 0 < ci["undefined"]["roc_auc"] < 400  # about (3/4)^4 = 32% of resamples have no positive
    assert ci["undefined"]["roc_auc"] == pytest.approx(400 * 0.75**4, rel=0.3)


def test_confusion_counts_call_pneumonia_at_or_above_the_threshold():
    counts = M.confusion(np.array([0, 0, 1, 1]), np.array([0.5, 0.4, 0.5, 0.49]), 0.5)
    assert counts == {"tn": 1, "fp": 1, "fn": 1, "tp": 1}
