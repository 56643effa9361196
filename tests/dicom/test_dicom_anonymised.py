"""Anonymised instances get a result: anonymisers empty or remove the type 2 attributes of the patient
and study modules, and the SR and the overlay are then made with those attributes empty."""

from __future__ import annotations

import pydicom
import pytest

import orthanc
from helpers import chest_dicoms
from helpers.dicomweb_server import DicomWebServer
from pneumoscan.dicom import Processor, StorageNode, pull

TYPE_2 = ("PatientBirthDate", "PatientSex", "StudyID", "StudyTime", "StudyDate", "AccessionNumber", "PatientID",
          "PatientName")


def _anonymised(grays, removed=(), emptied=(), base=None):
    ds = chest_dicoms.instance(base if base is not None else chest_dicoms.study(), chest_dicoms.CR, "CR", 1,
                               grays[0].astype("uint16") * 16, 12, ViewPosition="PA", BodyPartExamined="CHEST")
    for keyword in removed:
        delattr(ds, keyword)
    for keyword in emptied:
        setattr(ds, keyword, "")
    return ds


def _check_result(outcome, overlay: bool = True) -> None:
    assert outcome.scored, outcome.reason
    sr = pydicom.dcmread(outcome.sr_file)
    for keyword in TYPE_2:
        assert keyword in sr, keyword  # type 2: present, empty when the source had no value
    if overlay:
        sc = pydicom.dcmread(outcome.overlay_file)
        for keyword in TYPE_2:
            assert keyword in sc, keyword


@pytest.mark.parametrize("how", ["removed", "emptied"])
@pytest.mark.parametrize("keyword", TYPE_2)
def test_an_instance_without_a_type_2_attribute_gets_an_sr_and_an_overlay(dicom_model, grays, tmp_path, keyword, how):
    source = _anonymised(grays, **{how: [keyword]})
    outcome = Processor(dicom_model, tmp_path, overlay=True).process(source)
    _check_result(outcome)
    sr = pydicom.dcmread(outcome.sr_file)
    assert sr[keyword].value in ("", None)
    for other in TYPE_2:
        if other != keyword:
            assert sr[other].value == source[other].value, other


def test_a_fully_anonymised_instance_sent_to_the_node_is_scored(dicom_model, grays, tmp_path):
    from pynetdicom import AE
    from pynetdicom.sop_class import ComputedRadiographyImageStorage

    source = _anonymised(grays, removed=TYPE_2[:4], emptied=TYPE_2[4:])
    port = orthanc.free_port()
    with StorageNode(Processor(dicom_model, tmp_path), port):
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(ComputedRadiographyImageStorage, pydicom.uid.ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", port)
        assert assoc.is_established
        try:
            assert assoc.send_c_store(source).Status == 0
        finally:
            assoc.release()
    sr = pydicom.dcmread(tmp_path / "sr" / f"{source.SOPInstanceUID}.dcm")
    assert sr.StudyInstanceUID == source.StudyInstanceUID and sr.PatientID == ""


def test_a_fully_anonymised_instance_fetched_by_pull_is_scored(dicom_model, grays, tmp_path):
    base = chest_dicoms.study()
    sources = [_anonymised(grays, removed=TYPE_2, base=base), _anonymised(grays, emptied=TYPE_2, base=base)]
    study = str(base.StudyInstanceUID)
    with DicomWebServer({study: [chest_dicoms.encode(s) for s in sources]}) as server:
        result = pull(Processor(dicom_model, tmp_path, overlay=True), server.url, study=study, store=True)
    assert [o.scored for o in result.outcomes] == [True, True]
    for outcome in result.outcomes:
        _check_result(outcome)
    assert result.stored == 4 and len(server.stored) == 1


def test_pull_goes_on_after_an_instance_whose_result_cannot_be_made(dicom_model, grays, tmp_path, monkeypatch):
    from pneumoscan.dicom import result_objects as results

    base = chest_dicoms.study()
    sources = [_anonymised(grays, base=base), _anonymised(grays, base=base)]
    broken = sources[0].SOPInstanceUID
    build = results.structured_report

    def fails_for_one(source, *args):
        if source.SOPInstanceUID == broken:
            raise ValueError("a value highdicom refuses")
        return build(source, *args)

    monkeypatch.setattr(results, "structured_report", fails_for_one)
    study = str(base.StudyInstanceUID)
    with DicomWebServer({study: [chest_dicoms.encode(s) for s in sources]}) as server:
        result = pull(Processor(dicom_model, tmp_path), server.url, study=study)
    outcome = {o.ids.sop_instance_uid: o for o in result.outcomes}
    assert not outcome[broken].scored and "a value highdicom refuses" in outcome[broken].reason
    assert outcome[sources[1].SOPInstanceUID].scored
