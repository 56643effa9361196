"""Operating points are chosen on validation predictions and keep their promises."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pneumoscan.training.metrics import binary_summary, operating_points

scores = st.lists(st.tuples(st.integers(0, 1), st.floats(0.0, 1.0, allow_nan=False)), min_size=4, max_size=60)


def _rates(labels: np.ndarray, probs: np.ndarray, threshold: float) -> tuple[float, float]:
    predicted = probs >= threshold
    return predicted[labels == 1].mean(), (~predicted[labels == 0]).mean()


@settings(max_examples=40, deadline=None)
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
