"""The subtype fields in the server's answers: documented in OpenAPI, carried by the single and batch answers
as the row maker fills them (rows made here: the served test models have no subtype head)."""

from __future__ import annotations

import pytest

from pneumoscan.inference.rows import Source, result_rows
from pneumoscan.models import ModelMeta
from pneumoscan.provenance import DISCLAIMER
from pneumoscan.serving.responses import BatchItem, PredictResponse

META = ModelMeta(name="seed-cnn", image_size=64, threshold=0.5,
                 subtype={"temperature": 1.0, "threshold": 0.5, "uncertain": [0.4, 0.6]})


@pytest.mark.parametrize("model", [PredictResponse, BatchItem])
def test_openapi_documents_both_fields_as_optional(model):
    properties = model.model_json_schema()["properties"]
    assert "bacterial, viral or uncertain" in properties["subtype"]["description"]
    assert "probability" in properties["viral_probability"]["description"]
    assert {"subtype", "viral_probability"}.isdisjoint(model.model_json_schema().get("required", []))


def test_answers_carry_the_subtype_of_a_pneumonia_answer_and_none_for_normal():
    normal, pneumonia = result_rows(META, [Source("n.png"), Source("p.png")], [0.1, 0.9], viral=[0.8, 0.12])
    items = [BatchItem.of(row).model_dump() for row in (normal, pneumonia)]
    assert (items[0]["subtype"], items[0]["viral_probability"]) == (None, None)
    assert (items[1]["subtype"], items[1]["viral_probability"]) == ("bacterial", pytest.approx(0.12))
    single = PredictResponse(**pneumonia.record(), filename="p.png", backend="torch", latency_ms=1.0)
    assert single.model_dump()["subtype"] == "bacterial" and single.disclaimer == DISCLAIMER
