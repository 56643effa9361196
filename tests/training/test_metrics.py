"""Operating points are chosen on validation predictions and keep their promises."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers.properties import examples
from pneumoscan.evaluation.metrics import expected_calibration_error
from pneumoscan.training.metrics import binary_summary, operating_points, validation_temperature

scores = st.lists(st.tuples(st.integers(0, 1), st.floats(0.0, 1.0, allow_nan=False)), min_size=4, max_size=60)


def _rates(labels: np.ndarray, probs: np.ndarray, threshold: float) -> tuple[float, float]:
    predicted = probs >= threshold
    return predicted[labels == 1].mean(), (~predicted[labels == 0]).mean()


@settings(max_examples=examples(40), deadline=None)
@given(scores)
def test_operating_points_meet_their_sensitivity_and_specificity_targets(pairs):
    labels = np.array([p[0] for p in pairs])
    probs = np.array([p[1] for p in pairs])
    if len(set(labels)) < 2:
        return
    points = operating_points(labels, probs)
    assert _rates(labels, probs, points["sens95"])[0] >= 0.95
    assert _rates(labels, probs, points["spec95"])[1] >= 0.95
    best_j = max(sum(_rates(labels, probs, t)) - 1 for t in np.append(probs, 1.0))
    assert sum(_rates(labels, probs, points["youden"])) - 1 >= best_j - 1e-9


def test_summary_counts_sensitivity_and_specificity_at_the_threshold():
    labels = np.array([1, 1, 1, 0, 0])
    probs = np.array([0.9, 0.6, 0.2, 0.7, 0.1])
    summary = binary_summary(labels, probs, 0.5)
    assert summary["sensitivity"] == 2 / 3
    assert summary["specificity"] == 1 / 2
    assert summary["accuracy"] == 3 / 5
    assert abs(summary["auc"] - 4 / 6) < 1e-12


def test_validation_temperature_undoes_under_confidence_and_makes_probabilities_honest():
    rng = np.random.default_rng(0)
    logits = rng.normal(0.0, 3.0, 4000)
    labels = (rng.random(4000) < 1 / (1 + np.exp(-logits))).astype(int)  # calibrated at temperature 1
    squashed = 1 / (1 + np.exp(-logits / 2.5))  # what an under-confident network outputs
    temperature, skipped = validation_temperature(labels, squashed)
    assert skipped is None
    assert abs(temperature - 1 / 2.5) < 0.04
    rescaled = 1 / (1 + np.exp(-logits / 2.5 / temperature))
    assert expected_calibration_error(labels, rescaled) < 0.5 * expected_calibration_error(labels, squashed)


def test_a_class_balanced_model_gets_the_temperature_of_a_balanced_validation_population():
    rng = np.random.default_rng(1)
    labels = np.r_[np.ones(300, int), np.zeros(100, int)]  # validation with 3 pneumonia for 1 normal
    probs = 1 / (1 + np.exp(-(np.where(labels == 1, 1.0, -1.0) + rng.normal(0, 1.5, 400))))
    weighted, _ = validation_temperature(labels, probs, balanced=True)
    # Weighting the classes equally is the same as validating on each normal image three times.
    replicated = np.r_[labels, np.zeros(200, int)], np.r_[probs, np.tile(probs[labels == 0], 2)]
    assert weighted == pytest.approx(validation_temperature(*replicated)[0], rel=1e-3)
    assert abs(weighted - validation_temperature(labels, probs)[0]) > 0.01


def test_validation_temperature_is_not_fitted_where_validation_cannot_support_it():
    assert validation_temperature(np.array([1, 1, 1]), np.array([0.2, 0.6, 0.9])) == (1.0, "validation holds one class")
    temperature, why = validation_temperature(np.array([0, 0, 1, 1]), np.array([0.1, 0.3, 0.6, 0.8]))
    assert temperature == 1.0 and "separates the classes perfectly" in why
    temperature, why = validation_temperature(np.array([0, 1, 0, 1]), np.array([0.9, 0.2, 0.6, 0.4]))
    assert temperature == 1.0 and "anti-correlated" in why
