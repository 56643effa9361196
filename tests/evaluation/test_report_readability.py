"""The report reads well for a strong model: an enlarged corner on the ROC and PR curves when they hug
it, operating points that stay visible when they coincide, a compact setup table with the full record
folded, and one line on why "specificity 0.95" can have the lowest specificity."""

from __future__ import annotations

import numpy as np
import pytest

from pneumoscan.evaluation import EvaluateConfig, evaluate, plots


def _scores(separation: float, n: int = 400, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = np.r_[np.zeros(n // 2), np.ones(n // 2)].astype(int)
    logits = rng.normal(0, 1, n) + separation * labels
    return labels, 1 / (1 + np.exp(-logits))


@pytest.mark.parametrize(("separation", "zoomed"), [(6.0, True), (0.8, False)])
def test_the_curves_get_an_enlarged_corner_only_when_they_hug_it(monkeypatch, separation, zoomed):
    calls = []
    real = plots._corner_inset
    monkeypatch.setattr(plots, "_corner_inset", lambda *a, **k: calls.append(a) or real(*a, **k))
    labels, probs = _scores(separation)
    points = {"stored": 0.5, "youden": 0.5, "sens95": 0.2, "spec95": 0.8}
    for png in (plots.roc_plot(labels, probs, points, None, "AUC"), plots.pr_plot(labels, probs, points, "AP")):
        assert png.startswith(b"\x89PNG")
    assert len(calls) == (2 if zoomed else 0)


@pytest.mark.usefixtures("no_figures")
def test_the_report_folds_the_full_record_under_a_compact_table(tiny_run, tiny_data, tmp_path):
    result = evaluate(EvaluateConfig(models=[str(tiny_run)], data=str(tiny_data), out=str(tmp_path / "r"),
                                     bootstrap=50, gallery=0))
    page = result.html.read_text(encoding="utf-8")
    setup = page[page.index("Models, configuration, versions"):]
    assert "<details>" in setup and setup.index("<table") < setup.index("<details>")
    assert "git commit" in setup and "bootstrap" in setup
    assert setup.index("<pre>") > setup.index("<details>")  # the raw JSON only inside the fold
    markdown = result.markdown.read_text(encoding="utf-8")
    assert "spec95" in result.report["operating_points"]
    assert "lowest threshold that keeps specificity at 0.95" in page
    assert "lowest threshold that keeps specificity at 0.95" in markdown
