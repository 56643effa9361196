"""The pneumonia subtype in the DICOM SR: a coded finding (SNOMED CT) and the probability of viral, only for
a PNEUMONIA answer that carries one, in an SR that dciodvfy accepts.

The rows are made here with their subtype fields set (the model files of these tests have no subtype head).
"""

from __future__ import annotations

import io
import shutil
import subprocess

import pydicom
import pytest

from helpers import chest_dicoms
from pneumoscan.dicom.result_objects import (
    SUBTYPE,
    SUBTYPE_VALUES,
    VIRAL_PROBABILITY,
    encode,
    structured_report,
)
from pneumoscan.inference.rows import Prediction
from pneumoscan.models import ModelMeta

META = ModelMeta(name="seed-cnn", image_size=64, threshold=0.5, version="1.0",
                 subtype={"temperature": 1.0, "threshold": 0.5, "uncertain": [0.4, 0.6]})


def row(label: str, probability: float, subtype: str | None = None, viral: float | None = None) -> Prediction:
    return Prediction(file="x.dcm", probability=probability, label=label, subtype=subtype, viral_probability=viral,
                      threshold=0.5, model="seed-cnn", version="1.0")


@pytest.fixture(scope="module")
def source(grays):
    return chest_dicoms.corpus(grays)[chest_dicoms.GOOD[0]]


def _items(sr, concept) -> list:
    return [item for item in sr.ContentSequence if item.ConceptNameCodeSequence[0].CodeValue == concept.value]


@pytest.mark.parametrize(("subtype", "code"), [("bacterial", "53084003"), ("viral", "75570004"),
                                               ("uncertain", "373068000")])
def test_sr_codes_the_subtype_and_the_viral_probability(source, subtype, code, tmp_path):
    sr = pydicom.dcmread(io.BytesIO(encode(structured_report(source, row("PNEUMONIA", 0.9, subtype, 0.55), META))))
    (finding,) = _items(sr, SUBTYPE)
    value = finding.ConceptCodeSequence[0]
    assert (value.CodeValue, value.CodingSchemeDesignator) == (code, "SCT")
    assert value.CodeMeaning == SUBTYPE_VALUES[subtype].meaning
    (number,) = _items(sr, VIRAL_PROBABILITY)
    assert float(number.MeasuredValueSequence[0].NumericValue) == pytest.approx(0.55)
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy not installed (apt-get install dicom3tools)")
    file = tmp_path / "sr.dcm"
    file.write_bytes(encode(sr))
    result = subprocess.run(["dciodvfy", "-new", str(file)], capture_output=True, text=True, timeout=60)
    errors = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]
    assert errors == [], errors


@pytest.mark.parametrize("prediction", [row("NORMAL", 0.1), row("PNEUMONIA", 0.9)], ids=["normal", "no-head"])
def test_sr_without_a_subtype_has_no_subtype_items(source, prediction):
    sr = structured_report(source, prediction, META)
    assert _items(sr, SUBTYPE) == [] and _items(sr, VIRAL_PROBABILITY) == []
