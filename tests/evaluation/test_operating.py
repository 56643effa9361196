"""Operating points meet their targets; temperature scaling recovers a known temperature."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers.properties import examples
from pneumoscan.errors import DatasetError
from pneumoscan.evaluation.operating import (
    apply_temperature,
    choose_operating_points,
    fit_temperature,
    logit,
    median_youden,
    target_sensitivity_threshold,
)


def rates(labels, probs, threshold):
    called = probs >= threshold
    return called[labels == 1].mean(), (~called[labels == 0]).mean()


@st.composite
def validation_scores(draw):
    n = draw(st.integers(6, 80))
    labels = np.array(draw(st.lists(st.integers(0, 1), min_size=n, max_size=n)))
    labels[:2] = [0, 1]
    probs = np.round(np.array(draw(st.lists(st.floats(0.001, 0.999), min_size=n, max_size=n))), 2)
    return labels, probs


@settings(max_examples=examples(40), deadline=None)
@given(validation_scores())
def test_operating_points_meet_their_targets_and_are_the_best_such(data):
    labels, probs = data
    points = choose_operating_points(labels, probs)
    candidates = np.unique(probs)
    sens, spec = rates(labels, probs, points["sens95"])
    assert sens >= 0.95
    # No higher candidate threshold also reaches sensitivity 0.95 (it would give more specificity).
    assert all(rates(labels, probs, t)[0] < 0.95 for t in candidates[candidates > points["sens95"]])
    sens, spec = rates(labels, probs, points["spec95"])
    assert spec >= 0.95
    assert all(rates(labels, probs, t)[1] < 0.95 for t in candidates[candidates < points["spec95"]])
    best_j = max(sum(rates(labels, probs, t)) - 1 for t in candidates)
    assert sum(rates(labels, probs, points["youden"])) - 1 == pytest.approx(best_j)


def test_operating_points_need_both_classes():
    with pytest.raises(DatasetError, match="one class"):
        choose_operating_points(np.ones(5, dtype=int), np.linspace(0.1, 0.9, 5))


def test_temperature_scaling_recovers_a_known_temperature():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, 40_000)
    labels = (rng.random(40_000) < 1 / (1 + np.exp(-logits / 2.0))).astype(int)  # true temperature 2
    overconfident = 1 / (1 + np.exp(-logits))
    assert fit_temperature(labels, overconfident) == pytest.approx(2.0, rel=0.05)


def test_temperature_scaling_keeps_the_ranking_and_maps_thresholds_consistently():
    probs = np.array([0.01, 0.2, 0.5, 0.7, 0.99])
    scaled = apply_temperature(probs, 2.5)
    assert np.array_equal(np.argsort(probs), np.argsort(scaled))
    t = 0.6
    assert np.array_equal(probs >= t, scaled >= apply_temperature(np.array([t]), 2.5)[0])


def test_the_bootstrap_median_youden_point_sits_inside_the_gap_of_separable_scores():
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(130), np.ones(390)].astype(int)
    probs = np.r_[rng.uniform(0.001, 0.2, 130), rng.uniform(0.8, 0.999, 390)]
    points = choose_operating_points(labels, probs)
    # Youden's own threshold is the lowest positive score, the top edge of the gap; the median sits inside.
    assert points["youden"] == pytest.approx(probs[labels == 1].min())
    assert probs[labels == 0].max() < points["youden-median"] < probs[labels == 1].min()
    # Another draw of the same populations moves Youden's edge more than the median.
    other = np.r_[rng.uniform(0.001, 0.2, 130), rng.uniform(0.8, 0.999, 390)]
    again = choose_operating_points(labels, other)
    assert abs(again["youden-median"] - points["youden-median"]) < 0.05


def _median_youden_by_roc_curve(labels, probs, resamples=200, seed=0):
    """The definition, one resample at a time: scikit-learn's ROC curve of each resample, Youden's
    threshold and the next lower threshold, the middle of that gap in logit space."""
    from sklearn.metrics import roc_curve

    rng = np.random.default_rng(seed)
    picks = []
    for _ in range(resamples):
        index = rng.integers(0, len(labels), len(labels))
        y, p = labels[index], probs[index]
        if y.min() == y.max():
            continue
        fpr, tpr, thresholds = roc_curve(y, p, drop_intermediate=False)
        best = int(np.argmax(tpr[1:] - fpr[1:])) + 1
        below = thresholds[best + 1] if best + 1 < len(thresholds) else thresholds[best]
        picks.append(float(logit(np.array([thresholds[best], below])).mean()))
    return float(1.0 / (1.0 + np.exp(-np.median(picks))))


@settings(max_examples=examples(60), deadline=None)
@given(validation_scores(), st.integers(0, 2**32 - 1), st.sampled_from(["as drawn", "separable", "reversed"]))
def test_the_median_youden_point_is_exactly_the_one_of_each_resamples_roc_curve(data, seed, shape):
    labels, probs = data
    if shape == "separable":  # a gap between the classes: J is maximal all across it
        probs = np.where(labels == 1, 0.6 + 0.4 * probs, 0.5 * probs)
    elif shape == "reversed":  # anti-correlated: every J <= 0
        probs = np.where(labels == 1, 0.5 * probs, 0.6 + 0.4 * probs)
    assert median_youden(labels, probs, resamples=50, seed=seed) == _median_youden_by_roc_curve(
        labels, probs, resamples=50, seed=seed)


def test_the_sensitivity_point_reaches_its_target_with_an_interval():
    rng = np.random.default_rng(1)
    labels = np.r_[np.zeros(300), np.ones(300)].astype(int)
    probs = np.r_[rng.beta(2, 5, 300), rng.beta(5, 2, 300)]
    threshold, (low, high) = target_sensitivity_threshold(labels, probs, 0.95, resamples=300)
    assert low <= threshold <= high
    assert (probs[labels == 1] >= threshold).mean() == pytest.approx(0.95, abs=0.02)
