"""The subtype section of an evaluation: its figures against scikit-learn, the 3-class confusion matrix, the
report's three files and the CLI, and its absence (with the reason) when there is nothing to evaluate.

The end-to-end test evaluates a run whose model carries a head of seeded random weights (the figures' values
do not matter there, their plumbing does); the head of the shipped model is checked on real radiographs.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from sklearn import metrics as skm

import pneumoscan
from helpers.fake_runs import make_dataset, make_run, with_subtype_rule
from pneumoscan.cli import main
from pneumoscan.data.records import Sample
from pneumoscan.evaluation import EvaluateConfig, evaluate
from pneumoscan.evaluation import subtype as S
from pneumoscan.models.artifact import ModelMeta

RULE = {"temperature": 1.3, "threshold": 0.5, "uncertain": [0.4, 0.6], "rule": "chosen on validation patients",
        "val_metrics": {"roc_auc": 0.9}, "fitted_on": "test"}
CONFIG = SimpleNamespace(bootstrap=200, seed=0, level=0.95, bins=10, batch_size=64, tta=False)


@pytest.fixture(scope="module")
def subtyped_data(tmp_path_factory) -> Path:
    """The tiny synthetic dataset with a third of the pneumonia patients named ``virus``."""
    root = make_dataset(tmp_path_factory.mktemp("data"), {"train": 4, "val": 8, "test": 18})
    for path in sorted((root / "test" / "PNEUMONIA").glob("*.png")):
        patient = int(path.stem.split("_")[0].removeprefix("person"))
        if patient % 3 == 0:
            path.rename(path.with_name(path.name.replace("_bacteria_", "_virus_")))
    return root


@pytest.fixture(scope="module")
def headed_run(tmp_path_factory, subtyped_data) -> Path:
    return with_subtype_rule(make_run(tmp_path_factory.mktemp("run"), subtyped_data, threshold=0.5), RULE)


def sample(label: int, subtype: str | None, patient: str) -> Sample:
    return Sample(Path(f"{patient}.png"), label, patient, "test", subtype)


def test_head_figures_use_every_scored_pneumonia_with_a_subtype_even_those_called_normal():
    meta = ModelMeta(name="x", image_size=32, threshold=0.5, subtype=dict(RULE))
    samples = [sample(0, None, "n1"), sample(0, None, "n2"), sample(1, "bacterial", "b1"), sample(1, "bacterial", "b2"),
               sample(1, "bacterial", "b3"), sample(1, "viral", "v1"), sample(1, "viral", "v2"), sample(1, "viral", "v3"),
               sample(1, None, "u1"), sample(1, "viral", "v4")]
    probs = np.array([0.1, 0.7, 0.9, 0.8, 0.2, 0.95, 0.9, 0.3, 0.9, 0.9])  # b3 and v3 called NORMAL
    viral = np.array([0.3, 0.5, 0.1, 0.45, 0.55, 0.9, 0.35, 0.8, 0.62, 0.99])
    refused = {9: "not a frontal chest radiograph"}  # v4: out of scope, in no figure
    section = S.subtype_record(meta, samples, refused, probs, 0.5, viral, CONFIG)
    known = [2, 3, 4, 5, 6, 7]
    y, p = np.array([0, 0, 0, 1, 1, 1]), viral[known]
    assert section["images"] == 6 and (section["bacterial"], section["viral"]) == (3, 3)
    assert section["figures"]["roc_auc"].value == pytest.approx(skm.roc_auc_score(y, p))
    assert section["figures"]["sensitivity"].value == pytest.approx(2 / 3)  # v1, v3 at or above 0.5
    assert section["figures"]["specificity"].value == pytest.approx(2 / 3)  # b1, b2 below 0.5
    for figure in section["figures"].values():
        assert figure.low <= figure.value <= figure.high
    counts = section["confusion"]["counts"]
    assert counts["NORMAL"] == {"NORMAL": 1, "bacterial": 0, "viral": 0, "uncertain": 1, "refused": 0}
    assert counts["bacterial"] == {"NORMAL": 1, "bacterial": 1, "viral": 0, "uncertain": 1, "refused": 0}
    assert counts["viral"] == {"NORMAL": 1, "bacterial": 1, "viral": 1, "uncertain": 0, "refused": 1}
    assert counts["PNEUMONIA, subtype unknown"]["viral"] == 1
    # PNEUMONIA answers: n2, b1, b2, v1, v2, u1; uncertain (in [0.4, 0.6)): n2 (0.5) and b2 (0.45)
    assert section["pneumonia_answers"] == 6
    assert section["uncertain_share"].value == pytest.approx(2 / 6)


def test_no_unknown_subtype_row_when_every_pneumonia_has_one():
    meta = ModelMeta(name="x", image_size=32, subtype=dict(RULE))
    samples = [sample(0, None, "n"), sample(1, "bacterial", "b"), sample(1, "viral", "v")]
    section = S.subtype_record(meta, samples, {}, np.array([0.1, 0.9, 0.9]), 0.5, np.array([0.5, 0.2, 0.7]), CONFIG)
    assert section["confusion"]["rows"] == ["NORMAL", "bacterial", "viral"]
    assert section["figures"]["roc_auc"].value == 1.0


def test_report_json_markdown_html_and_cli_show_the_subtype(headed_run, subtyped_data, tmp_path, monkeypatch,
                                                           capsys, no_figures):
    assert main(["evaluate", str(headed_run), "--data", str(subtyped_data), "--bootstrap", "50", "--gallery", "0",
                 "--out", str(tmp_path / "r")]) == 0
    printed = capsys.readouterr().out
    assert "subtype (viral vs bacterial" in printed and "(published 0.940)" in printed
    data = json.loads((tmp_path / "r" / "report.json").read_text())
    section = data["subtype"]
    viral_files = [p for p in (subtyped_data / "test" / "PNEUMONIA").glob("*_virus_*")]
    assert section["available"] and section["viral"] == len(viral_files) > 0
    assert section["bacterial"] == 18 - len(viral_files)
    counts = section["confusion"]["counts"]
    assert sum(sum(row.values()) for row in counts.values()) == data["scope"]["decoded"]
    assert sum(counts["viral"].values()) == len(viral_files)
    printed_rows = {line.split()[0]: [int(x) for x in line.split()[1:]] for line in printed.splitlines()
                    if line.startswith("  ") and line.split()[0] in counts and line.split()[1:] and
                    all(x.isdigit() for x in line.split()[1:])}
    assert printed_rows == {row: [counts[row][a] for a in S.ANSWERS] for row in counts}  # the matrix is printed
    assert 0 <= section["figures"]["roc_auc"]["value"] <= 1
    markdown = (tmp_path / "r" / "report.md").read_text()
    assert "## Pneumonia subtype: bacterial or viral" in markdown
    assert "| ROC-AUC (viral vs bacterial) |" in markdown and "| 0.940 |" in markdown
    assert "| viral | " + " | ".join(str(counts["viral"][a]) for a in S.ANSWERS) + " |" in markdown
    html = (tmp_path / "r" / "report.html").read_text()
    assert "id='subtype'" in html and "Answered uncertain" in html and S.PUBLISHED_NOTE in html


def test_subtype_section_is_absent_with_its_reason(tiny_run, headed_run, subtyped_data, tmp_path, no_figures):
    no_head = evaluate(EvaluateConfig(models=[str(tiny_run)], data=str(subtyped_data), out=str(tmp_path / "a"),
                                      bootstrap=20, gallery=0))
    assert no_head.report.subtype == S.absent("the model has no subtype head: its metadata holds no subtype rule")
    assert "No subtype figures: the model has no subtype head" in no_head.markdown.read_text()
    # The same images in a manifest without a subtype column: nothing says which pneumonia is which.
    manifest = tmp_path / "m.csv"
    files = sorted((subtyped_data / "test").rglob("*.png"))
    manifest.write_text("path,label\n" + "".join(f"{f},{f.parent.name}\n" for f in files))
    unknown = evaluate(EvaluateConfig(models=[str(headed_run)], data=str(manifest), out=str(tmp_path / "b"),
                                      bootstrap=20, gallery=0))
    assert not unknown.report.subtype["available"]
    assert "give no scored PNEUMONIA image a subtype" in unknown.report.subtype["reason"]


def test_viral_probabilities_of_a_model_with_a_head(shared_data):
    """Needs a model file whose backend computes the subtype head (the bundled model once it has one)."""
    classifier = pneumoscan.load("default")
    if not classifier.meta.subtype:
        pytest.skip("the bundled model has no subtype head yet")
    files = sorted((shared_data / "chest_xray" / "test" / "PNEUMONIA").glob("*.jpeg"))[:6]
    files += sorted((shared_data / "chest_xray" / "test" / "NORMAL").glob("*.jpeg"))[:6]
    images = np.stack([classifier.preprocess(f) for f in files])  # the model input, (N, 1, S, S)
    viral = S.viral_probabilities(classifier, images)
    assert viral is not None and viral.shape == (len(files),) and ((viral >= 0) & (viral <= 1)).all()
    for row, value in zip(classifier.assess(images, [str(f) for f in files]), viral, strict=True):
        assert (row.viral_probability is None) == (row.label != "PNEUMONIA")
        if row.viral_probability is not None:
            assert row.viral_probability == pytest.approx(value, abs=1e-6)
