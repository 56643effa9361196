"""`dicom pull` against a real PACS: QIDO-RS finds the study on Orthanc's DICOMweb, WADO-RS fetches it,
and with --store STOW-RS puts the SRs and overlays back beside the radiographs."""

from __future__ import annotations

import csv
import io

import pydicom
import pytest

import orthanc
import pneumoscan
from helpers import chest_dicoms
from pneumoscan.cli import main
from pneumoscan.dicom.results import PROBABILITY

# A PACS: Orthanc, or an address where none answers (the DICOMweb client's retries take half a minute).
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def pacs(orthanc_ready, tmp_path_factory):
    with orthanc.Orthanc(tmp_path_factory.mktemp("orthanc")) as server:
        yield server


@pytest.fixture(scope="module")
def study(pacs, grays, tmp_path_factory):
    """One study uploaded to Orthanc, and its files on disk (for `predict`)."""
    corpus = chest_dicoms.corpus(grays, chest_dicoms.study("PAT-0002", "ACC-0002", date="20261120"))
    folder = tmp_path_factory.mktemp("pull-corpus")
    files = {}
    for name, ds in corpus.items():
        files[name] = folder / f"{name}.dcm"
        files[name].write_bytes(chest_dicoms.encode(ds))
        pacs.upload(files[name].read_bytes())
    return corpus, files


def test_pull_store_puts_srs_equal_to_predict_back_into_orthanc(pacs, study, dicom_model, tmp_path, capsys):
    corpus, files = study
    uid = corpus["cr-mono2-12bit"].StudyInstanceUID
    out = tmp_path / "out"
    code = main(["dicom", "pull", str(dicom_model), "--url", pacs.dicomweb, "--study", uid, "--out", str(out),
                 "--store", "--overlay"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    good = len(chest_dicoms.GOOD)
    assert f"scored {good} of " in printed.out and f"{2 * good} result(s) stored" in printed.out

    expected = {row.source: row.probability
                for row in pneumoscan.load(dicom_model).predict([files[n] for n in chest_dicoms.GOOD])}
    srs = [s for s in pacs.instances_of_modality("SR")
           if pydicom.dcmread(io.BytesIO(pacs.file(s))).SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"]
    assert len(srs) == good and len(pacs.instances_of_modality("OT")) == good
    stored = {}
    for sr_id in srs:
        sr = pydicom.dcmread(io.BytesIO(pacs.file(sr_id)))
        assert sr.StudyInstanceUID == uid and sr.PatientID == "PAT-0002" and sr.AccessionNumber == "ACC-0002"
        source = next(i for i in sr.ContentSequence if i.ValueType == "IMAGE").ReferencedSOPSequence[0]
        value = next(i for i in sr.ContentSequence
                     if i.ValueType == "NUM" and i.ConceptNameCodeSequence[0].CodeValue == PROBABILITY.value)
        stored[source.ReferencedSOPInstanceUID] = float(value.MeasuredValueSequence[0].NumericValue)
    for name in chest_dicoms.GOOD:
        assert stored[corpus[name].SOPInstanceUID] == pytest.approx(expected[str(files[name])], abs=1e-6), name

    rows = list(csv.DictReader(io.StringIO((out / "worklist.csv").read_text())))
    refused = {r["sop_instance_uid"]: r["reason"] for r in rows if r["status"] == "refused"}
    # CR/DX instances that are not frontal chest radiographs are fetched and refused with their reason;
    # the CT and SR series are not even fetched (QIDO says their modality).
    for name in ("lateral", "no-pixels", "knee", "damaged-pixels"):
        assert chest_dicoms.BAD[name] in refused[corpus[name].SOPInstanceUID], name
    assert len(rows) == good + 4

    # A second pull finds the SRs and overlays it stored in the study and leaves them alone.
    assert main(["dicom", "pull", str(dicom_model), "--url", pacs.dicomweb, "--study", uid,
                 "--out", str(tmp_path / "again")]) == 0
    assert f"scored {good} of {good + 4} instance(s)" in capsys.readouterr().out


def test_pull_since_a_date_finds_the_studies_from_that_date_on(pacs, study, dicom_model, tmp_path, capsys):
    assert main(["dicom", "pull", str(dicom_model), "--url", pacs.dicomweb, "--since", "2026-11-21",
                 "--out", str(tmp_path / "none")]) == 0
    assert "scored 0 of 0 instance(s)" in capsys.readouterr().out
    assert main(["dicom", "pull", str(dicom_model), "--url", pacs.dicomweb, "--since", "2026-11-20",
                 "--out", str(tmp_path / "one")]) == 0
    assert f"scored {len(chest_dicoms.GOOD)} of " in capsys.readouterr().out


def test_pull_errors_are_one_line_naming_the_server_or_the_option(dicom_model, tmp_path, capsys):
    url = f"http://127.0.0.1:{orthanc.free_port()}/dicom-web"  # nothing listens there
    assert main(["dicom", "pull", str(dicom_model), "--url", url, "--study", "1.2.3", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"pneumoscan: error: {url}") and "cannot reach" in err and "\n" not in err
    assert main(["dicom", "pull", str(dicom_model), "--url", url, "--since", "last week", "--out", str(tmp_path)]) == 2
    assert "--since 'last week'" in capsys.readouterr().err
