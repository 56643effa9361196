"""The model card says where the stored threshold came from."""

from __future__ import annotations

from pneumoscan.inference.model_card import threshold_rule
from pneumoscan.models.artifact import ModelMeta


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


def test_a_stale_exports_model_card_is_not_served_for_the_retrained_model(exported_run, tmp_path):
    import shutil

    from pneumoscan.models import build_model, read_meta, save_model
    from pneumoscan.serving.app import load_served
    from pneumoscan.serving.responses import served_card

    run = tmp_path / "run"
    shutil.copytree(exported_run, run)
    meta = read_meta(run)
    save_model(run, build_model(meta.name, meta.image_size),
               ModelMeta(name=meta.name, image_size=meta.image_size, threshold=0.7, run_id="retrained"))
    served = load_served(run)
    assert served.backend_name == "torch"
    card = served_card(served)
    assert "test-run" not in str(card)  # the old export's card named the old run
    assert "0.7" in str(card) and card["serving"]["explain"] is True
