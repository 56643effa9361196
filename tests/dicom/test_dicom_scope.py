"""The DICOM node applies the scope gate of `predict`: an instance out of scope is acknowledged, listed as
refused with its reason, and gets no SR that could claim NORMAL or PNEUMONIA."""

from __future__ import annotations

import copy
import csv
import io

import numpy as np
import pytest
from PIL import Image

from helpers import chest_dicoms
from helpers.gated import pictures
from pneumoscan.dicom import Processor


@pytest.fixture(scope="module")
def corpus(grays):
    return chest_dicoms.corpus(grays)


@pytest.mark.parametrize(("changes", "words"), [
    ({"BodyPartExamined": "KNEE"}, "out of scope: DICOM BodyPartExamined KNEE, not CHEST"),
    ({"ViewPosition": "LL"}, "out of scope: DICOM ViewPosition LL (a lateral view)"),
    ({"Modality": "RTIMAGE"}, "out of scope: DICOM Modality RTIMAGE"),
])
def test_the_node_refuses_what_the_header_says_is_out_of_scope_and_writes_no_sr(corpus, dicom_model, tmp_path,
                                                                               changes, words):
    ds = copy.deepcopy(corpus["cr-mono2-12bit"])  # a shallow copy shares its elements with the corpus
    for key, value in changes.items():
        setattr(ds, key, value)
    outcome = Processor(dicom_model, tmp_path).process(ds)
    assert not outcome.scored and outcome.probability is None and outcome.label is None
    assert words in outcome.reason and outcome.derived == []
    assert not (tmp_path / "sr").exists()
    row = next(csv.DictReader(io.StringIO((tmp_path / "worklist.csv").read_text())))
    assert row["status"] == "refused" and words in row["reason"] and row["probability"] == ""


def test_the_node_refuses_pixels_the_learned_check_puts_out_of_scope_and_scores_the_others(corpus, gated_run, tmp_path):
    # A CR chest instance whose pixels are a text page: the header passes, the gate of the model refuses it.
    page = np.asarray(Image.open(pictures(tmp_path / "in")["page"]).convert("L").resize((64, 64)))
    chest = np.asarray(Image.open(tmp_path / "in" / "chest0.png"))
    instances = {}
    for number, (name, pixels) in enumerate((("page", page), ("chest", chest)), start=40):
        ds = chest_dicoms.instance(chest_dicoms.study(), chest_dicoms.CR, "CR", number, pixels.astype(np.uint16) * 16,
                                   12, ViewPosition="PA", BodyPartExamined="CHEST")
        instances[name] = ds
    processor = Processor(gated_run, tmp_path / "out")
    refused = processor.process(instances["page"])
    assert not refused.scored and refused.probability is None and refused.derived == []
    assert refused.reason.startswith("out of scope: unlike the training radiographs"), refused.reason
    scored = processor.process(instances["chest"])
    assert scored.scored, scored.reason
    srs = list((tmp_path / "out" / "sr").glob("*.dcm"))
    assert [p.stem for p in srs] == [instances["chest"].SOPInstanceUID]
