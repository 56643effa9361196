"""A real report of the bundled model on real test radiographs: every interval holds its estimate, the ECE is
defined with its bins, the stored threshold's rule is the model's own, and the images the scope gate refuses
are counted, named and kept out of the metrics, exactly those ``predict`` refuses."""

from __future__ import annotations

from html import escape as html_escape
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import pneumoscan
from helpers.fake_runs import make_run
from pneumoscan.bundled import BUNDLED_DIR, WEIGHTS_FILE
from pneumoscan.evaluation import EvaluateConfig, evaluate, plots
from pneumoscan.evaluation.scoring import UNRECORDED_RULE
from pneumoscan.inference.model_card import threshold_rule

PER_CLASS = 30
# Out of scope, each for a different rule: a drawing (too few grey levels) and a real radiograph upside down
# (the bundled model's learned orientation probe).
DRAWING = "IM-9000-0001.png"
UPSIDE_DOWN = "person9001_virus_1.png"


@pytest.fixture(scope="module")
def real_test_data(shared_data, tmp_path_factory) -> Path:
    """test/{NORMAL,PNEUMONIA}: the first 30 official test images of each class (symlinks), and two images
    the scope gate must refuse."""
    root = tmp_path_factory.mktemp("real_test")
    for cls in ("NORMAL", "PNEUMONIA"):
        (root / "test" / cls).mkdir(parents=True)
        for f in sorted((shared_data / "chest_xray" / "test" / cls).glob("*.jpeg"))[:PER_CLASS]:
            (root / "test" / cls / f.name).symlink_to(f)
    stripes = np.repeat(np.array([0, 80, 160, 240], np.uint8), 50)[None].repeat(200, axis=0)
    Image.fromarray(stripes).save(root / "test" / "NORMAL" / DRAWING)
    radiograph = sorted((shared_data / "chest_xray" / "test" / "PNEUMONIA").glob("*.jpeg"))[-1]
    Image.fromarray(np.asarray(Image.open(radiograph).convert("L"))[::-1]).save(root / "test" / "PNEUMONIA" / UPSIDE_DOWN)
    return root


@pytest.fixture(scope="module")
def real_report(real_test_data, tmp_path_factory):
    return evaluate(EvaluateConfig(models=[str(BUNDLED_DIR / WEIGHTS_FILE)], data=str(real_test_data), split="test",
                                   out=str(tmp_path_factory.mktemp("report")), bootstrap=300, gallery=0))


def _figures(node, where: str = ""):
    """Every ``{value, low, high}`` of report.json, with where it is."""
    if isinstance(node, dict):
        if {"value", "low", "high"} <= set(node):
            yield where, node
        for key, child in node.items():
            yield from _figures(child, f"{where}.{key}")


def test_every_interval_of_a_real_report_holds_its_estimate(real_report):
    data = real_report.report.to_dict()
    figures = list(_figures(data))
    assert len(figures) > 50
    for where, figure in figures:
        if figure["value"] is not None:
            assert figure["low"] <= figure["value"] <= figure["high"], where
            assert figure["method"], where
    # Proportions of 1 (every pneumonia image called at some point) get the exact interval, never [1, 1].
    ones = [(w, f) for w, f in figures if f["value"] == 1.0 and "sensitivity" in w]
    assert ones, "expected a point that calls every pneumonia image"
    for where, figure in ones:
        # 30 of 30 scored pneumonia images: 0.884; 31 of 31 with the refused one scored (scope.all_images).
        n = PER_CLASS + where.startswith(".scope")
        assert figure["low"] == pytest.approx(0.025 ** (1 / n), abs=1e-9), where
    ece = data["metrics"]["threshold_free"]["ece"]
    assert 0 <= ece["value"] < ece["plug_in"]  # the plug-in's upward bias, corrected


def test_the_ece_is_defined_with_its_bins_in_every_renderer(real_report):
    html, markdown = real_report.html.read_text(encoding="utf-8"), real_report.markdown.read_text(encoding="utf-8")
    bins = real_report.report.reliability
    assert sum(bins["count"]) == real_report.report.data["images"] == 2 * PER_CLASS + 2 - real_report.report.scope["refused"]
    for text in (html, markdown):
        assert "Expected calibration error (ECE)" in text and "equal-width bins" in text
        assert "bias-corrected" in text and "basic bootstrap interval" in text
    for lower, upper, count in zip(bins["lower"], bins["upper"], bins["count"], strict=True):
        if count:  # each non-empty bin's row: its edges beside its count, in both renderers
            edge = f"[{lower:.2f}, {upper:.2f}{']' if upper >= 1 else ')'}"
            assert f"| {edge} | {int(count)} |" in markdown and f"<td>{edge}</td><td>{int(count)}</td>" in html


def test_the_stored_threshold_is_described_by_the_models_own_rule(real_report, tiny_data, tmp_path):
    rule = threshold_rule(pneumoscan.load(BUNDLED_DIR / WEIGHTS_FILE).meta)
    assert rule.startswith("sens95-median")
    assert rule in real_report.report.to_dict()["operating_points"]["stored"]["rule"]
    html = real_report.html.read_text(encoding="utf-8")
    said = f"The stored threshold: stored in the model and applied as is; {rule}"
    assert html_escape(said) in html and said in real_report.markdown.read_text(encoding="utf-8")
    assert "class-balanced 0.5 by default" not in html
    # A model that records no rule is not given the default's.
    bare = evaluate(EvaluateConfig(models=[str(make_run(tmp_path / "run", tiny_data))], data=str(tiny_data),
                                   out=str(tmp_path / "r"), bootstrap=20, gallery=0))
    assert UNRECORDED_RULE in bare.report.operating_points["stored"]["rule"]
    assert "sens95-median" not in bare.report.operating_points["stored"]["rule"]


def _refused_by_predict(folder: Path) -> dict[str, int]:
    """``{file name: label}`` of the images ``predict`` gives no probability: out of scope, or pixels that
    hold no radiograph (the shipped gate also refuses a few real radiographs: they count the same)."""
    files = sorted(str(p) for p in (folder / "test").rglob("*.*"))
    return {Path(r.source).name: int(Path(r.source).parent.name == "PNEUMONIA")
            for r in pneumoscan.load(BUNDLED_DIR / WEIGHTS_FILE).predict(files) if r.probability is None}


def test_refused_images_are_counted_named_and_left_out_of_the_metrics(real_report, real_test_data):
    report = real_report.report
    scope = report.scope
    refused = _refused_by_predict(real_test_data)
    assert {DRAWING, UPSIDE_DOWN} <= set(refused)
    decoded, scored = 2 * PER_CLASS + 2, 2 * PER_CLASS + 2 - len(refused)
    assert (scope["decoded"], scope["refused"], scope["scored"]) == (decoded, len(refused), scored)
    pneumonia = sum(refused.values())
    assert (scope["refused_normal"], scope["refused_pneumonia"]) == (len(refused) - pneumonia, pneumonia)
    named = {Path(item["path"]).name: item["reason"] for item in scope["images"]}
    assert set(named) == set(refused)  # exactly the images predict refuses
    assert "grey levels" in named[DRAWING] and "looks mirrored top-bottom" in named[UPSIDE_DOWN]  # turned: told so
    # The metrics are those of the scored images only; every decoded image's figures stand beside them.
    assert report.data["images"] == scored and sum(report.confusion_matrix["stored"].values()) == scored
    assert set(scope["all_images"]) == {"sensitivity", "specificity", "accuracy"}
    assert any(w.startswith(f"{len(refused)} of the {decoded} decoded images") for w in report.warnings)
    for text in (real_report.html.read_text(encoding="utf-8"), real_report.markdown.read_text(encoding="utf-8")):
        assert "Out of scope" in text and DRAWING in text and UPSIDE_DOWN in text


def test_the_reliability_diagram_shows_each_bins_count(monkeypatch):
    drawn = []
    monkeypatch.setattr(plots, "_png", lambda fig, **margins: drawn.append(fig) or b"")
    labels = np.array([0] * 101 + [1] * 2 + [0] + [1] * 197)
    probs = np.r_[np.full(101, 0.01), 0.45, 0.46, 0.47, np.full(197, 0.99)]
    plots.reliability_plot(labels, {"model": probs})
    texts = [t.get_text() for t in drawn[0].axes[0].texts]
    assert texts == ["n=101", "n=3", "n=197"]
