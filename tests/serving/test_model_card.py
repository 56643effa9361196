"""The model card says where the stored threshold came from."""

from __future__ import annotations

from pneumoscan.models.artifact import ModelMeta
from pneumoscan.serving.model_card import threshold_rule


def _meta(rule: str, temperature: float = 1.0) -> ModelMeta:
    return ModelMeta(name="mini-resnet", image_size=128, fit="stretch", threshold=0.5, temperature=temperature,
                     val_metrics={"images": 529}, provenance={"config": {"threshold_rule": rule}})


def test_a_validation_rule_names_how_many_validation_images_chose_it():
    assert threshold_rule(_meta("sens95-median")).endswith("sensitivity >= 0.95 (529 validation images)")


def test_the_balanced_point_is_not_credited_to_validation_but_its_temperature_is():
    text = threshold_rule(_meta("balanced", temperature=0.75))
    assert text.startswith("balanced: probability 0.5 of a model trained class-balanced")
    assert text.endswith("; temperature 0.750 fitted on validation (529 validation images)")
    assert "validation images" not in threshold_rule(_meta("balanced"))
