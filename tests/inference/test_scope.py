"""The scope gate: the DICOM-header and pixel rules, the learned check stored with the model (torch and ONNX
agree), and the output contract of the Python API and of `predict` (no probability, no label, the reason;
the override scores and marks)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

import pneumoscan
from helpers.gated import pictures as make_pictures
from helpers.images import write_dicom
from pneumoscan.cli import main
from pneumoscan.inference import Classifier, load
from pneumoscan.inference import scope as gate_rules


def dataset(**fields) -> pydicom.Dataset:
    ds = pydicom.Dataset()
    for key, value in fields.items():
        setattr(ds, key, value)
    return ds


def code(value: str, meaning: str) -> pydicom.Dataset:
    return dataset(CodeValue=value, CodingSchemeDesignator="SCT", CodeMeaning=meaning)


# -- the rules of the file -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("fields", "words"), [
    ({"Modality": "CT"}, "DICOM Modality CT"),
    ({"Modality": "MR"}, "DICOM Modality MR"),
    ({"Modality": "RTIMAGE"}, "DICOM Modality RTIMAGE"),
    ({"Modality": "MG", "BodyPartExamined": "BREAST"}, "DICOM Modality MG"),
    ({"Modality": "CR", "BodyPartExamined": "KNEE"}, "BodyPartExamined KNEE, not CHEST"),
    ({"Modality": "DX", "ViewPosition": "LL"}, "ViewPosition LL (a lateral view)"),
    ({"Modality": "DX", "ViewPosition": "OBL"}, "ViewPosition OBL (not a frontal view)"),
    ({"Modality": "DX", "ViewCodeSequence": [code("399198007", "right lateral")]}, "ViewCodeSequence 399198007"),
    ({"Modality": "CR", "PhotometricInterpretation": "PALETTE COLOR"}, "PhotometricInterpretation PALETTE COLOR"),
])
def test_a_dicom_header_that_says_it_is_not_a_frontal_chest_radiograph_is_refused_with_the_reason(fields, words):
    reason = gate_rules.header_reason(dataset(**fields))
    assert reason is not None and words in reason


@pytest.mark.parametrize("fields", [
    {},  # says nothing: the pixels decide
    {"Modality": "CR", "BodyPartExamined": "CHEST", "ViewPosition": "PA", "PhotometricInterpretation": "MONOCHROME1"},
    {"Modality": "DX", "BodyPartExamined": "THORAX", "ViewPosition": "AP"},
    {"Modality": "DX", "ViewCodeSequence": [code("399348003", "postero-anterior")]},
    {"Modality": "DX", "ViewCodeSequence": [code("123", "antero-posterior")]},
    {"Modality": "CR", "PhotometricInterpretation": "RGB"},  # a grey radiograph saved in colour: the pixels decide
])
def test_a_frontal_chest_header_or_one_that_says_nothing_passes(fields):
    assert gate_rules.header_reason(dataset(**fields)) is None


def test_the_dicom_node_also_requires_the_chest_to_be_named():
    assert "BodyPartExamined missing" in gate_rules.header_reason(dataset(Modality="CR"), require_chest=True)
    assert "Modality missing" in gate_rules.header_reason(dataset(BodyPartExamined="CHEST"), require_chest=True)
    assert gate_rules.header_reason(dataset(Modality="CR", BodyPartExamined="CHEST"), require_chest=True) is None


# -- pixels that hold no radiograph -------------------------------------------------------------------------
def test_float_images_with_nan_or_infinity_are_refused_before_the_network(tmp_path, exported_run):
    nan = tmp_path / "nan.tiff"
    Image.fromarray(np.full((32, 32), np.nan, np.float32), mode="F").save(nan)
    inf = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    inf[5] = np.inf
    Image.fromarray(inf, mode="F").save(tmp_path / "inf.tiff")
    rows = load(exported_run).predict([str(nan), str(tmp_path / "inf.tiff")])
    assert [r.probability for r in rows] == [None, None]
    assert all("NaN or infinity" in r.error for r in rows), [r.error for r in rows]


# -- the contract, with the rules ----------------------------------------------------------------------------
def test_a_dicom_of_another_modality_gets_no_probability_and_the_override_scores_it_marked(tmp_path, exported_run):
    ct = write_dicom(tmp_path / "ct.dcm", np.random.default_rng(0).integers(0, 4000, (64, 64)))
    ds = pydicom.dcmread(ct)
    ds.Modality = "CT"
    ds.save_as(ct)
    row = load(exported_run).predict(str(ct))[0]
    assert (row.probability, row.label) == (None, None)
    assert row.error == f"{ct}: out of scope: DICOM Modality CT, not a radiograph (CR or DX)"
    with pytest.raises(gate_rules.OutOfScopeError, match="out of scope: DICOM Modality CT"):
        load(exported_run).preprocess(str(ct))

    scored = load(exported_run, scope_check=False).predict(str(ct))[0]
    assert scored.probability is not None and scored.label in ("NORMAL", "PNEUMONIA")
    assert scored.error.startswith(f"{ct}: scope check off: scored although out of scope: DICOM Modality CT")


# -- the learned check ---------------------------------------------------------------------------------------
def test_a_model_with_a_gate_carries_it_in_its_file_and_both_backends_compute_it_alike(gated_run, tmp_path):
    from pneumoscan.models import load_model
    from pneumoscan.models.scope_gate import gate_of

    model, meta = load_model(gated_run)
    assert gate_of(model) is not None and meta.scope["distance_threshold"] > 0
    assert 0.99 <= meta.scope["held_out_kept"] <= 1.0
    torch_c, onnx_c = load(gated_run), load(gated_run / "export" / "model.onnx")
    assert (torch_c.backend.name, onnx_c.backend.name) == ("torch", "onnxruntime")
    assert torch_c.scope_note is None and onnx_c.scope_note is None
    batch = np.stack([torch_c.preprocess(str(p)) for p in make_pictures(tmp_path).values()])
    (t_logits, t_scope, _), (o_logits, o_scope, _) = torch_c.backend.scores(batch), onnx_c.backend.scores(batch)
    assert t_scope.shape == (len(batch), 13)
    np.testing.assert_allclose(o_logits, t_logits, atol=1e-4)
    np.testing.assert_allclose(o_scope, t_scope, rtol=1e-3, atol=1e-3)


def test_the_gate_refuses_far_images_with_their_score_and_never_changes_an_in_scope_probability(gated_run, tmp_path):
    pictures = make_pictures(tmp_path)
    classifier = load(gated_run / "export" / "model.onnx")
    rows = {Path(r.source).stem: r for r in classifier.predict([str(p) for p in pictures.values()])}
    for name in ("page", "noise"):
        assert (rows[name].probability, rows[name].label) == (None, None), name
        assert rows[name].error.startswith(f"{pictures[name]}: out of scope: unlike the training radiographs "
                                           "(scope distance "), rows[name].error
    passed = [name for name in pictures if name.startswith("chest") and rows[name].error is None]
    assert len(passed) >= 3, {n: rows[n].error for n in pictures}
    raw = classifier.predict_proba([str(pictures[name]) for name in passed])
    assert [rows[name].probability for name in passed] == pytest.approx(list(raw), abs=1e-7)

    unchecked = load(gated_run / "export" / "model.onnx", scope_check=False)
    marked = {Path(r.source).stem: r for r in unchecked.predict([str(pictures["page"]), str(pictures["chest0"])])}
    assert marked["page"].probability == pytest.approx(float(unchecked.predict_proba(str(pictures["page"]))[0]))
    assert marked["page"].error.startswith(f"{pictures['page']}: scope check off: scored although out of scope: "
                                           "unlike the training radiographs")
    assert marked["chest0"].probability == rows["chest0"].probability


def test_an_image_out_of_orientation_is_refused_with_the_orientation_it_looks_like(gated_run):
    meta = load(gated_run).meta
    meta = replace(meta, scope={**meta.scope, "orientation_margin": 1.5, "kind_threshold": float(np.log(0.5))})
    radiograph = np.log([0.95] + [0.01] * 5)  # the kind probe: one frontal radiograph
    near = meta.scope["distance_threshold"] / 2
    turned = np.log([0.01, 0.9, 0.03, 0.02, 0.02, 0.02])  # the probe says: rotated 90 degrees
    reason = gate_rules.gate_reason(meta, np.r_[near, turned, radiograph])
    assert reason.startswith("looks rotated 90 degrees (p(upright) 0.010")
    # Both probes refuse: the surer one names what was sent.
    unsure_kind, sure_kind = np.log([0.1, 0.05, 0.8, 0.02, 0.02, 0.01]), np.log([0.002, 0.002, 0.99, 0.002, 0.002, 0.002])
    upside_down = np.log([0.01, 0.02, 0.9, 0.03, 0.02, 0.02])
    reason = gate_rules.gate_reason(meta, np.r_[near, upside_down, unsure_kind])
    assert reason.startswith("looks rotated 180 degrees") and reason.endswith("non-inverted radiograph")
    mirrored_maybe = np.log([0.1, 0.01, 0.01, 0.01, 0.85, 0.02])
    assert gate_rules.gate_reason(meta, np.r_[near, mirrored_maybe, sure_kind]).startswith(
        "looks like several radiographs in one image")
    assert gate_rules.gate_reason(meta, np.r_[near, np.log([0.97] + [0.006] * 5), unsure_kind]).startswith(
        "looks like several radiographs in one image")
    assert gate_rules.gate_reason(meta, np.r_[near, np.log([0.97] + [0.006] * 5), radiograph]) is None
    far = gate_rules.gate_reason(meta, np.r_[meta.scope["distance_threshold"] * 3, np.log([0.01] * 5 + [0.95]), radiograph])
    assert "unlike the training radiographs" in far and "inverted" not in far  # one reason: the first rule's


def test_a_model_without_a_gate_skips_the_learned_check_with_a_note_and_keeps_the_rules(exported_run, tmp_path):
    classifier = load(exported_run)
    assert classifier.scope_note is not None and "no scope gate" in classifier.scope_note
    noise = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64), dtype=np.uint8)).save(noise)
    assert classifier.predict(str(noise))[0].probability is not None
    dot = np.zeros((64, 64), np.uint8)
    dot[10, 10] = 255
    Image.fromarray(dot).save(tmp_path / "dot.png")
    dotted = classifier.predict(str(tmp_path / "dot.png"))[0]
    assert dotted.probability is None and "only 2 grey levels" in dotted.error and "out of scope" not in dotted.error


def test_assess_applies_the_gate_to_decoded_images(gated_run, tmp_path):
    classifier = load(gated_run / "export" / "model.onnx")
    pictures = make_pictures(tmp_path)
    batch = np.stack([classifier.preprocess(str(pictures[n])) for n in ("chest0", "page")])
    good, far = classifier.assess(batch, ["a", "b"])
    assert good.probability is not None and far.probability is None and far.error.startswith("b: out of scope")
    strict = Classifier(classifier.backend, replace(classifier.meta, scope={**classifier.meta.scope,
                                                                           "distance_threshold": 1e-6}))
    assert all(r.probability is None for r in strict.assess(batch, ["a", "b"]))


# -- the command line ----------------------------------------------------------------------------------------
def test_predict_lists_out_of_scope_images_with_their_reason_and_scores_them_only_when_told(gated_run, tmp_path, capsys):
    pictures = make_pictures(tmp_path / "in")
    assert main(["predict", str(gated_run), str(pictures["chest0"]), str(pictures["page"])]) == 0
    printed = capsys.readouterr()
    line = next(line for line in printed.out.splitlines() if "page.png" in line)
    assert "out of scope: unlike the training radiographs" in line and "NORMAL" not in line and "PNEUMONIA" not in line
    assert "1 file(s) out of scope" in printed.err
    out = tmp_path / "rows.json"
    assert main(["predict", str(gated_run), str(pictures["page"]), "--out", str(out)]) == 1  # nothing scored
    row = json.loads(out.read_text())["predictions"][0]
    assert (row["probability"], row["label"]) == (None, None) and "out of scope" in row["error"]

    capsys.readouterr()
    assert main(["predict", str(gated_run), str(pictures["page"]), "--no-scope-check"]) == 0
    table = capsys.readouterr().out
    line = next(line for line in table.splitlines() if "page.png" in line)
    assert "scope check off" in line and ("NORMAL" in line or "PNEUMONIA" in line)


def test_streamed_predict_refuses_out_of_scope_images_on_their_rows(gated_run, tmp_path, capsys):
    from pneumoscan.inference.results import read_results

    pictures = make_pictures(tmp_path / "in")
    out = tmp_path / "rows.jsonl"
    assert main(["predict", str(gated_run), str(tmp_path / "in"), "--out", str(out), "--workers", "1"]) == 0
    rows = {Path(r["file"]).stem: r for r in read_results(out)}
    assert rows["page"]["probability"] is None and rows["page"]["label"] is None
    assert "out of scope: unlike the training radiographs" in rows["page"]["error"]
    assert rows["chest0"]["probability"] is not None
    assert main(["predict", str(gated_run), str(tmp_path / "in"), "--out", str(out), "--no-scope-check",
                 "--workers", "1"]) == 0
    rows = {Path(r["file"]).stem: r for r in read_results(out)}
    assert rows["page"]["probability"] is not None and "scope check off" in rows["page"]["error"]
    assert len(pictures) == len(rows)


# -- the bundled model on real radiographs -------------------------------------------------------------------
def test_the_bundled_model_refuses_rotated_mirrored_and_inverted_radiographs_and_scores_upright_ones(shared_data, tmp_path):
    from PIL import ImageOps

    source = sorted((shared_data / "chest_xray" / "test" / "PNEUMONIA").glob("*.jpeg"))[0]
    upright = Image.open(source).convert("L")
    variants = {"rot90": upright.transpose(Image.Transpose.ROTATE_90),
                "rot180": upright.transpose(Image.Transpose.ROTATE_180),
                "flip": upright.transpose(Image.Transpose.FLIP_TOP_BOTTOM), "inverted": ImageOps.invert(upright)}
    for name, image in variants.items():
        image.save(tmp_path / f"{name}.png")
    model = pneumoscan.load()
    row = model.predict(str(source))[0]
    assert row.error is None and row.probability == pytest.approx(float(model.predict_proba(str(source))[0]), abs=1e-7)
    rows = {Path(r.source).stem: r for r in model.predict(str(tmp_path))}
    for name in variants:
        assert rows[name].probability is None and rows[name].label is None, name
        assert "out of scope" in rows[name].error, name
    # Turned a quarter, it is far from every training radiograph: the distance refuses it first.
    assert "unlike the training radiographs" in rows["rot90"].error
    assert "looks rotated 180 degrees" in rows["rot180"].error and "looks inverted" in rows["inverted"].error
