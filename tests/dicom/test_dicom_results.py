"""The DICOM objects pneumoscan writes: a Comprehensive SR and a Grad-CAM Secondary Capture that validate
(highdicom reads them back), reference their source and keep its patient and study."""

from __future__ import annotations

import io

import highdicom as hd
import numpy as np
import pydicom
import pytest

from helpers import chest_dicoms
from pneumoscan.dicom import Processor, refusal
from pneumoscan.dicom.result_objects import OVERLAY_DESCRIPTION, PROBABILITY, THRESHOLD
from pneumoscan.provenance import DISCLAIMER


@pytest.fixture(scope="module")
def corpus(grays):
    return chest_dicoms.corpus(grays)


def _numeric(sr, concept) -> float:
    for item in sr.ContentSequence:
        if item.ValueType == "NUM" and item.ConceptNameCodeSequence[0].CodeValue == concept.value:
            return float(item.MeasuredValueSequence[0].NumericValue)
    raise AssertionError(f"no {concept.meaning} in the SR")


def _texts(sr) -> dict[str, str]:
    return {item.ConceptNameCodeSequence[0].CodeMeaning: item.TextValue
            for item in sr.ContentSequence if item.ValueType == "TEXT"}


@pytest.mark.parametrize("name", chest_dicoms.BAD)
def test_instances_that_are_not_frontal_chest_radiographs_are_refused_with_their_reason(corpus, dicom_model, tmp_path, name):
    outcome = Processor(dicom_model, tmp_path).process(corpus[name])
    assert not outcome.scored and outcome.probability is None and outcome.derived == []
    assert chest_dicoms.BAD[name] in outcome.reason
    assert not (tmp_path / "sr").exists()


def test_good_instances_pass_the_screen(corpus):
    assert [refusal(corpus[name]) for name in chest_dicoms.GOOD] == [None] * len(chest_dicoms.GOOD)


def test_sr_and_overlay_validate_reference_the_source_and_keep_patient_and_study(corpus, dicom_model, tmp_path):
    import pneumoscan

    source = corpus["dx-mono1-16bit"]
    outcome = Processor(dicom_model, tmp_path, overlay=True).process(source)
    assert outcome.scored, outcome.reason
    source_file = tmp_path / "source.dcm"
    source_file.write_bytes(chest_dicoms.encode(source))
    expected = pneumoscan.load(dicom_model).predict([source_file])[0]

    sr = pydicom.dcmread(outcome.sr_file)
    hd.sr.ComprehensiveSR.from_dataset(sr)  # highdicom's own reading checks the SR's structure
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR Storage
    for keyword in ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
                    "AccessionNumber", "StudyDate", "StudyID"):
        assert sr[keyword].value == source[keyword].value, keyword
    assert sr.SeriesInstanceUID != source.SeriesInstanceUID and sr.SOPInstanceUID != source.SOPInstanceUID
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == source.StudyInstanceUID
    series = evidence.ReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == source.SeriesInstanceUID
    assert series.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    image_refs = [i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in sr.ContentSequence if i.ValueType == "IMAGE"]
    assert image_refs == [source.SOPInstanceUID]
    assert _numeric(sr, PROBABILITY) == pytest.approx(expected.probability, abs=1e-6)
    assert _numeric(sr, THRESHOLD) == pytest.approx(0.5)
    texts = _texts(sr)
    assert texts["Label at the operating threshold"] == expected.label
    meta = pneumoscan.load(dicom_model).meta
    assert texts["Algorithm Name"] == "seed-cnn"
    # The version and date of the model's metadata, not the name of the folder it was trained in.
    assert texts["Algorithm Version"] == ", ".join([f"pneumoscan {meta.version}"]
                                                   + ([f"trained {meta.created}"] if meta.created else []))
    assert meta.run_id not in texts["Algorithm Version"]
    assert texts["Comment"] == DISCLAIMER
    assert sr.CompletionFlag == "COMPLETE" and sr.VerificationFlag == "UNVERIFIED"

    sc = pydicom.dcmread(outcome.overlay_file)
    assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7" and sc.Modality == "OT"
    assert refusal(sc) is not None  # an overlay sent back to the node is never scored again
    assert sc.StudyInstanceUID == source.StudyInstanceUID and sc.PatientID == source.PatientID
    assert sc.SeriesInstanceUID not in (source.SeriesInstanceUID, sr.SeriesInstanceUID)
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert sc.BurnedInAnnotation == "YES" and sc.SeriesDescription == OVERLAY_DESCRIPTION
    assert sc.ImageComments == DISCLAIMER
    pixels = sc.pixel_array
    assert pixels.shape == (512, 512, 3) and sc.PhotometricInterpretation == "RGB"
    band = pixels[-40:]
    assert (band == 0).all(axis=2).mean() > 0.5  # the black band under the text
    yellow = (band[..., 0] > 200) & (band[..., 1] > 200) & (band[..., 2] < 80)
    assert yellow.sum() > 200  # the burned-in words
    colour = np.abs(pixels[:400, :, 0].astype(int) - pixels[:400, :, 2].astype(int)).mean()
    assert colour > 5  # the heatmap is over the radiograph, not a grey copy of it


def test_a_result_written_twice_keeps_its_uids_so_the_pacs_replaces_it(corpus, dicom_model, tmp_path):
    first = Processor(dicom_model, tmp_path / "a").process(corpus["cr-voi-lut"])
    again = Processor(dicom_model, tmp_path / "b").process(corpus["cr-voi-lut"])
    a, b = pydicom.dcmread(first.sr_file), pydicom.dcmread(again.sr_file)
    assert (a.SOPInstanceUID, a.SeriesInstanceUID) == (b.SOPInstanceUID, b.SeriesInstanceUID)


def test_worklist_lists_scored_instances_by_decreasing_probability_then_refused_ones(corpus, dicom_model, tmp_path):
    import csv

    processor = Processor(dicom_model, tmp_path)
    for ds in corpus.values():
        processor.process(ds, origin="test")
    processor.worklist.finish()  # the end of a session (the node stopping, a pull ending)
    rows = list(csv.DictReader(io.StringIO((tmp_path / "worklist.csv").read_text())))
    assert len(rows) == len(corpus)
    scored = [r for r in rows if r["status"] == "scored"]
    assert len(scored) == len(chest_dicoms.GOOD)
    assert rows[: len(scored)] == scored  # scored first ...
    probabilities = [float(r["probability"]) for r in scored]
    assert probabilities == sorted(probabilities, reverse=True)  # ... the most suspicious on top
    assert len(set(probabilities)) == len(probabilities)  # distinct: a mix-up of instances would show
    for row in rows:
        source = next(ds for ds in corpus.values() if ds.SOPInstanceUID == row["sop_instance_uid"])
        assert (row["patient_id"], row["accession_number"], row["study_instance_uid"]) == (
            source.PatientID, source.AccessionNumber, source.StudyInstanceUID)
        if row["status"] == "scored":
            expected = {k for k, v in {"sens95": 0.2, "spec95": 0.8}.items() if float(row["probability"]) >= v}
            assert set(row["flags"].split()) == expected
        else:
            assert row["reason"] and not row["probability"]
    # A second session on the same folder keeps the rows of the first.
    again = Processor(dicom_model, tmp_path)
    again.process(corpus["sc-8bit"])
    again.worklist.finish()
    assert len(list(csv.DictReader(io.StringIO((tmp_path / "worklist.csv").read_text())))) == len(corpus)


def test_worklist_csv_quotes_identifiers_a_spreadsheet_would_evaluate(grays, dicom_model, tmp_path):
    import csv
    import json

    formula = "=cmd|' /C calc'!A0"
    source = chest_dicoms.instance(chest_dicoms.study(formula, "+1+1"), chest_dicoms.CR, "CR", 1,
                                   grays[0].astype("uint16") * 16, 12, ViewPosition="PA", BodyPartExamined="CHEST")
    processor = Processor(dicom_model, tmp_path)
    processor.process(source, origin="@evil")
    processor.worklist.finish()
    row = next(csv.DictReader((tmp_path / "worklist.csv").open(newline="")))
    assert (row["patient_id"], row["accession_number"], row["origin"]) == ("'" + formula, "'+1+1", "'@evil")
    assert 0 <= float(row["probability"]) <= 1
    kept = json.loads((tmp_path / "worklist.json").read_text())["results"][0]  # JSON keeps the values as sent
    assert (kept["patient_id"], kept["accession_number"]) == (formula, "+1+1")


def test_every_sr_and_overlay_the_node_writes_passes_dciodvfy(corpus, grays, dicom_model, tmp_path):
    """dicom3tools' validator checks each object against its IOD: no error (warnings are about the
    private coding scheme and the empty identifiers of the anonymised source)."""
    import shutil
    import subprocess

    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy not installed (apt-get install dicom3tools)")
    anonymised = chest_dicoms.instance(chest_dicoms.study(), chest_dicoms.CR, "CR", 20, grays[0].astype("uint16") * 16,
                                       12, ViewPosition="PA", BodyPartExamined="CHEST")
    for keyword in ("PatientBirthDate", "PatientSex", "StudyID", "StudyTime"):
        delattr(anonymised, keyword)
    for keyword in ("StudyDate", "AccessionNumber", "PatientID", "PatientName"):
        setattr(anonymised, keyword, "")
    processor = Processor(dicom_model, tmp_path, overlay=True)
    files = []
    for source in [*(corpus[name] for name in chest_dicoms.GOOD), anonymised]:
        outcome = processor.process(source)
        assert outcome.scored, outcome.reason
        files += [outcome.sr_file, outcome.overlay_file]
    for file in files:
        result = subprocess.run(["dciodvfy", "-new", file], capture_output=True, text=True, timeout=60)
        errors = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]
        assert errors == [], f"{file}: {errors}"


def test_results_keep_the_source_character_set(grays, dicom_model, tmp_path):
    source = chest_dicoms.instance(chest_dicoms.study(), chest_dicoms.CR, "CR", 1, grays[0].astype("uint16") * 16, 12,
                                   ViewPosition="PA", BodyPartExamined="CHEST")
    source.SpecificCharacterSet, source.PatientName = "ISO_IR 192", "Müller^Zoë"
    received = pydicom.dcmread(io.BytesIO(chest_dicoms.encode(source)))  # as the node gets it: encoded
    outcome = Processor(dicom_model, tmp_path, overlay=True).process(received)
    for file in (outcome.sr_file, outcome.overlay_file):
        result = pydicom.dcmread(file)
        assert (result.SpecificCharacterSet, str(result.PatientName)) == ("ISO_IR 192", "Müller^Zoë")


def test_the_sr_made_from_the_model_shell_is_the_one_highdicom_builds_whole(corpus, grays, dicom_model):
    """SRs made in turn for different sources (one must not change another) equal, element for element,
    highdicom's ComprehensiveSR of each; only the times of creation differ."""
    import pneumoscan
    from pneumoscan.dicom.result_objects import encode, highdicom_report, structured_report

    meta = pneumoscan.load(dicom_model).meta
    equipped = chest_dicoms.instance(chest_dicoms.study(), chest_dicoms.CR, "CR", 3, grays[0].astype("uint16") * 16, 12,
                                     ViewPosition="PA", BodyPartExamined="CHEST", Manufacturer="ACME",
                                     StationName="CR-1", SpecificCharacterSet="ISO_IR 192", PatientAge="005Y")
    sources = [*(corpus[name] for name in chest_dicoms.GOOD), equipped]
    rows = [pneumoscan.load(dicom_model).prediction("x", p) for p in (0.1, 0.9, 0.5, 0.3, 0.7, 0.6)]
    made = [structured_report(source, row, meta) for source, row in zip(sources, rows, strict=True)]

    def comparable(sr) -> pydicom.Dataset:
        ds = pydicom.dcmread(io.BytesIO(encode(sr)))
        for keyword in ("InstanceCreationDate", "InstanceCreationTime", "ContentDate", "ContentTime"):
            del ds[keyword]
        for item in ds.ContributingEquipmentSequence:
            item.pop("ContributionDateTime", None)
        return ds

    for source, row, sr in zip(sources, rows, made, strict=True):
        expected = comparable(highdicom_report(source, row, meta))
        assert comparable(sr) == expected and comparable(sr).file_meta == expected.file_meta
    assert len({sr.SOPInstanceUID for sr in made}) == len(made)
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, made[0])  # as a STOW-RS client writes it: a file, preamble and all
    assert buffer.getvalue()[128:132] == b"DICM"
    assert made[-1].ContributingEquipmentSequence[0].Manufacturer == "ACME"  # the source's, as highdicom lists it
