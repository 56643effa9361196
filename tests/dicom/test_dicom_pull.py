"""`dicom pull` against a real PACS: QIDO-RS finds the study on Orthanc's DICOMweb, WADO-RS fetches it,
and with --store STOW-RS puts the SRs and overlays back beside the radiographs. And against servers that
lie: endless answers, endless pages, a trickle, UIDs that are not UIDs."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

import orthanc
import pneumoscan
from helpers import chest_dicoms
from helpers.dicomweb_server import HOSTILE, DicomWebServer
from pneumoscan.cli import main
from pneumoscan.dicom import Processor, pull
from pneumoscan.dicom.result_objects import PROBABILITY

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.e2e  # runs each pull in its own process, under a memory cap
@pytest.mark.parametrize("hostile", HOSTILE)
def test_pull_from_a_lying_server_ends_within_its_deadline_under_1_gib_with_a_one_line_reason(hostile, dicom_model,
                                                                                             tmp_path):
    deadline, read_timeout = 8.0, 2.0
    expected = {"endless-json": "the answer passed the limit of 8,388,608 bytes",
                "endless-part": "a part of the answer passed the limit of 67,108,864 bytes",
                "endless-pages": "more than 10,000 results",
                "trickle": f"stopped at the pull's deadline of {deadline:g} s"}[hostile]
    with DicomWebServer(hostile=hostile, interval=0.5) as server:
        # The child caps its address space at what it holds once the model is loaded plus 1 GiB: a pull
        # that reads without bound dies of MemoryError there instead of taking the machine's memory.
        command = [sys.executable, str(REPO / "tests" / "helpers" / "hostile_pull.py"), str(dicom_model), server.url,
                   str(tmp_path / "out"), "--deadline", str(deadline), "--read-timeout", str(read_timeout),
                   "--headroom-mib", "1024"] + (["--since", "2026-01-01"] if hostile == "endless-pages" else [])
        env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    assert expected in measured["error"] and measured["error"].startswith(server.url), measured
    assert "\n" not in measured["error"]
    # Within the deadline, give or take one read (a read never waits longer than the read timeout).
    assert measured["seconds"] < deadline + read_timeout + 1, measured
    if hostile == "endless-pages":
        assert server.searches <= 101  # 100 pages of 100 studies, then the limit; not a search loop


def test_a_study_whose_uid_is_not_a_uid_is_skipped_and_the_pull_goes_on(dicom_model, grays, tmp_path, capsys):
    good = chest_dicoms.study(date="20261120")
    files = [chest_dicoms.encode(chest_dicoms.corpus(grays, good)["cr-mono2-12bit"])]
    studies = {"../../x": files, "1.2.3\n4": files, str(good.StudyInstanceUID): files}
    with DicomWebServer(studies) as server:
        result = pull(Processor(dicom_model, tmp_path / "api"), server.url, since="2026-11-01")
        assert [o.ids.study_instance_uid for o in result.outcomes] == [str(good.StudyInstanceUID)]
        assert [uid for uid, _ in result.skipped_studies] == ["'../../x'", "'1.2.3\\n4'"]
        assert all("invalid UID" in why for _, why in result.skipped_studies)
        assert main(["dicom", "pull", str(dicom_model), "--url", server.url, "--since", "2026-11-01",
                     "--out", str(tmp_path / "cli")]) == 0
    printed = capsys.readouterr().out
    assert "study '../../x'  the server gave the study an invalid UID; skipped" in printed
    assert "scored 1 of 1 instance(s), 0 series skipped, 2 studies skipped" in printed
    assert list((tmp_path / "cli").rglob("x*")) == [] and not (tmp_path / "x").exists()


def test_a_study_uid_given_on_the_command_line_must_be_a_uid(dicom_model, tmp_path, capsys):
    assert main(["dicom", "pull", str(dicom_model), "--url", "http://127.0.0.1:9/", "--study", "../../x",
                 "--out", str(tmp_path)]) == 2
    assert "--study '../../x': not a UID" in capsys.readouterr().err


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


@pytest.mark.e2e  # starts a PACS
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


@pytest.mark.e2e  # starts a PACS
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
