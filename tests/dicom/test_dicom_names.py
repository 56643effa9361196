"""Names from the network are data, never paths: whatever a sender puts in a SOP Instance UID, the
result is written under ``--out`` with a name made of digits and dots (or a hash), and logged escaped."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

import orthanc
from helpers import chest_dicoms
from helpers.dicomweb_server import DicomWebServer
from pneumoscan.dicom import Processor, StorageNode, pull
from pneumoscan.dicom.instances import file_stem, is_valid_uid
from pneumoscan.errors import OutputError


def hostile_uids(tmp_path: Path) -> dict[str, str]:
    return {
        "parent": "../../escaped/evil",
        "absolute": str(tmp_path / "absolute" / "evil"),
        "newline": "1.2.3\nFORGED scored instance 9.9.9: p(pneumonia) 0.0000",
        "nul": "1.2.3\x00/../../nul-evil",
        "long": "1." + "2" * 198,
        "empty": "",
    }


def _instance(grays, uid: str, base=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the invalid UIDs this test is about
        ds = chest_dicoms.instance(base if base is not None else chest_dicoms.study(), chest_dicoms.CR, "CR", 1,
                                   grays[0].astype("uint16") * 16, 12, ViewPosition="PA", BodyPartExamined="CHEST")
        ds.SOPInstanceUID = uid
        ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()  # what the C-STORE request names
    return ds


def _write(ds, path: Path) -> Path:
    """``ds`` as a file whose meta names another (valid) instance UID than its body: the file meta is
    written as it is (enforce_file_format would copy the body's UID into it)."""
    from pydicom import dcmwrite

    ds.preamble = b"\0" * 128
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcmwrite(path, ds, enforce_file_format=False)
    return path


def _every_file(root: Path) -> set[Path]:
    return {Path(folder) / name for folder, _, names in os.walk(root) for name in names}


def _check_results(tmp_path: Path, out: Path, uids: dict[str, str], outcomes, messages: list[str]) -> None:
    assert {o.ids.sop_instance_uid for o in outcomes if o.scored} == set(uids.values())
    expected = {(out / "sr" / f"{file_stem(uid)}.dcm").resolve() for uid in uids.values()}
    assert {Path(o.sr_file).resolve() for o in outcomes} == expected
    for path in expected:
        assert is_valid_uid(path.stem) or path.stem.startswith("invalid-uid-"), path
    # Nothing outside out/ beyond what the test itself put there, no folder made from a UID.
    assert not (tmp_path / "escaped").exists() and not (tmp_path.parent / "escaped").exists()
    assert not (tmp_path / "absolute").exists()
    assert {p.resolve() for p in _every_file(out / "sr")} == expected
    assert not any("\n" in m or "\x00" in m for m in messages)
    assert not any(m.startswith("FORGED") for m in messages)


def test_file_stem_keeps_valid_uids_and_hashes_everything_else():
    assert file_stem("1.2.840.10008.5.1.4.1.1.1") == "1.2.840.10008.5.1.4.1.1.1"
    names = [file_stem(u) for u in ("../x", "/etc/passwd", "a\nb", "1.2\x00", "1." + "2" * 63, "", "1.02", "1..2")]
    assert all(n.startswith("invalid-uid-") and Path(n).name == n and len(n) < 64 for n in names)
    assert len(set(names)) == len(names)  # distinct senders' names stay distinct


def test_hostile_uids_sent_to_the_node_are_written_under_out_with_safe_names(dicom_model, grays, tmp_path, caplog,
                                                                            monkeypatch):
    from pynetdicom import AE, _config
    from pynetdicom.sop_class import ComputedRadiographyImageStorage

    uids = hostile_uids(tmp_path)
    out = tmp_path / "deep" / "out"
    files = {name: _write(_instance(grays, uid), tmp_path / f"{name}.dcm") for name, uid in uids.items()}
    # The sender streams each file as it is, its request naming the file meta's (valid) UID; the body's
    # SOP Instance UID is the one under test.
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    port = orthanc.free_port()
    processor = Processor(dicom_model, out)
    outcomes = []
    record = processor.process_many

    def process_many(items):
        outcomes.extend(record(items))
        return outcomes[-len(items):]

    processor.process_many = process_many
    with caplog.at_level("INFO", logger="pneumoscan.dicom"), StorageNode(processor, port):
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(ComputedRadiographyImageStorage, pydicom.uid.ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", port)
        assert assoc.is_established
        try:
            for name, path in files.items():  # sent as files: the request names the file meta's valid UID
                assert assoc.send_c_store(path).Status == 0, name
        finally:
            assoc.release()
    _check_results(tmp_path, out, uids, outcomes, caplog.messages)


def test_hostile_uids_fetched_by_pull_are_written_under_out_with_safe_names(dicom_model, grays, tmp_path, caplog):
    uids = hostile_uids(tmp_path)
    base = chest_dicoms.study()
    study = str(base.StudyInstanceUID)
    files = []
    for uid in uids.values():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            files.append(chest_dicoms.encode(_instance(grays, uid, base)))
    out = tmp_path / "deep" / "out"
    with caplog.at_level("INFO", logger="pneumoscan.dicom"), DicomWebServer({study: files}) as server:
        result = pull(Processor(dicom_model, out), server.url, study=study, store=True)
    assert result.stored == len(uids)
    _check_results(tmp_path, out, uids, result.outcomes, caplog.messages)


def test_a_result_folder_linked_outside_out_is_refused_not_written_through(dicom_model, corpus_cr, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "sr").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(OutputError, match="outside"):
        Processor(dicom_model, out).process(corpus_cr)
    assert list(elsewhere.iterdir()) == []


@pytest.fixture
def corpus_cr(grays):
    return _instance(grays, generate_uid())


def test_header_values_in_a_refusal_cannot_forge_a_log_line(dicom_model, grays, tmp_path, caplog):
    source = _instance(grays, generate_uid())
    source.BodyPartExamined = "KNEE\nFORGED scored instance 1.2.3: p(pneumonia) 0.0000"
    with caplog.at_level("INFO", logger="pneumoscan.dicom"):
        outcome = Processor(dicom_model, tmp_path).process(source, origin="MODALITY\n@127.0.0.1")
    assert not outcome.scored and "KNEE" in outcome.reason
    assert any("KNEE" in m for m in caplog.messages)
    assert not any("\n" in m for m in caplog.messages)
