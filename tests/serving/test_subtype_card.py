"""The model card's section on the subtype answer: present for a model with a subtype head (what it is, the
band and its rule, validation and evaluation figures, the ONNX outputs, what it is not), absent otherwise."""

from __future__ import annotations

from pneumoscan.inference.model_card import OUT_OF_SCOPE, build_model_card, render_markdown
from pneumoscan.inference.subtype_card import subtype_card
from pneumoscan.models.artifact import ModelMeta
from pneumoscan.provenance import DISCLAIMER

RULE = {"temperature": 1.25, "threshold": 0.45, "uncertain": [0.3, 0.6],
        "rule": "band holding 10 % of validation patients around the Youden point", "fitted_on": "run-7 validation",
        "val_metrics": {"roc_auc": 0.912, "images": 310}}


def _meta(**subtype) -> ModelMeta:
    return ModelMeta(name="mini-resnet", image_size=128, threshold=0.5, subtype=subtype)


def test_a_model_with_a_head_has_the_section_in_both_forms_of_the_card():
    card = build_model_card(_meta(**RULE))
    section = card["subtype"]
    assert section["threshold"] == 0.45 and section["uncertain"] == [0.3, 0.6] and section["temperature"] == 1.25
    assert section["rule"] == RULE["rule"] and section["validation"] == RULE["val_metrics"]
    assert set(section["onnx_outputs"]) == {"viral_logit", "viral_probability"}
    assert all("(N, 1)" in text for text in section["onnx_outputs"].values())
    nots = " ".join(section["not"])
    assert "Not a microbiological diagnosis" in nots and "Guangzhou Women and Children's Medical Center" in nots
    assert "1-5" in nots and "clinical annotation" in nots
    assert not any("Telling bacterial from viral" in item for item in card["out_of_scope"])
    markdown = render_markdown(card)
    assert "## Subtype answer" in markdown and "P(viral | pneumonia)" in markdown
    assert "bacterial below 0.3000, viral at or above 0.6000" in markdown and RULE["rule"] in markdown
    assert "`viral_probability`" in markdown and "roc_auc 0.9120" in markdown
    assert markdown.count(DISCLAIMER) == 2


def test_a_model_without_a_head_has_no_section_and_keeps_bacterial_vs_viral_out_of_scope():
    card = build_model_card(_meta())
    assert card["subtype"] is None and card["out_of_scope"] == OUT_OF_SCOPE
    assert "Subtype answer" not in render_markdown(card)


def test_the_evaluation_reports_subtype_figures_or_its_reason_join_the_section():
    figure = {"value": 0.88, "low": 0.8, "high": 0.93, "method": "percentile bootstrap (patients)"}
    report = {"subtype": {"available": True, "images": 390, "figures": {"roc_auc": figure, "sensitivity": figure},
                          "uncertain_share": {"value": 0.1, "low": 0.07, "high": 0.14}}}
    section = subtype_card(_meta(**RULE), report)
    assert section["evaluation"]["roc_auc"] == figure and section["evaluation"]["images"] == 390
    card = build_model_card(_meta(**RULE))
    card["subtype"] = section
    assert "roc_auc 0.880 [0.800, 0.930]" in render_markdown(card)
    absent = subtype_card(_meta(**RULE), {"subtype": {"available": False, "reason": "the data carry no subtypes"}})
    assert absent["evaluation"] == {"note": "the data carry no subtypes"}
