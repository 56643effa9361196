"""The node answers a C-STORE once the instance is safely spooled, scores the spool in batches, and a node
killed mid-study scores what it acknowledged when it starts again: one SR and one worklist row each."""

from __future__ import annotations

import csv
import io
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest

import orthanc
from helpers import chest_dicoms
from pneumoscan.dicom import Processor, StorageNode
from pneumoscan.dicom.processing import Received
from pneumoscan.dicom.spool import SPOOL_FOLDER, Scorer, Spool, provenance, spool_file
from pneumoscan.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
HELPERS = REPO / "tests" / "helpers"


def _study(grays, count: int) -> list:
    base = chest_dicoms.study("PAT-SPOOL", "ACC-SPOOL")
    return [chest_dicoms.instance(base, chest_dicoms.CR, "CR", i + 1, grays[i % len(grays)].astype(np.uint16) * 16, 12,
                                  ViewPosition="PA", BodyPartExamined="CHEST") for i in range(count)]


def _sender(port: int, timeout: float = 30.0):
    from pynetdicom import AE
    from pynetdicom.sop_class import ComputedRadiographyImageStorage

    ae = AE(ae_title="MODALITY")
    ae.dimse_timeout = timeout  # an answer that waits for the model would come too late
    ae.add_requested_context(ComputedRadiographyImageStorage, pydicom.uid.ExplicitVRLittleEndian)
    return ae


def _worklist_rows(out: Path) -> list[dict]:
    return list(csv.DictReader(io.StringIO((out / "worklist.csv").read_text())))


def test_a_c_store_is_answered_once_spooled_before_the_instance_is_scored(dicom_model, grays, tmp_path):
    instances = _study(grays, 3)
    processor = Processor(dicom_model, tmp_path)
    gate = threading.Event()
    score = processor.process_many

    def held(items):
        gate.wait(60)
        return score(items)

    processor.process_many = held
    port = orthanc.free_port()
    node = StorageNode(processor, port).start()
    try:
        assoc = _sender(port, timeout=10).associate("127.0.0.1", port)
        assert assoc.is_established
        statuses = [assoc.send_c_store(ds).Status for ds in instances]
        assoc.release()
        assert statuses == [0, 0, 0]  # answered while the scorer is held
        spooled = sorted(p.name for p in (tmp_path / SPOOL_FOLDER).glob("*.dcm"))
        assert spooled == sorted(f"{ds.SOPInstanceUID}.dcm" for ds in instances)
        assert _worklist_rows(tmp_path) == [] and not (tmp_path / "sr").exists()
        kept = pydicom.dcmread(tmp_path / SPOOL_FOLDER / spooled[0])  # the instance as sent, and who sent it
        assert kept.PixelData in {ds.PixelData for ds in instances}
        assert provenance(kept)[0] == "MODALITY@127.0.0.1"
    finally:
        gate.set()
        node.stop()
    assert list((tmp_path / SPOOL_FOLDER).glob("*.dcm")) == []
    rows = _worklist_rows(tmp_path)
    assert sorted(r["sop_instance_uid"] for r in rows) == sorted(ds.SOPInstanceUID for ds in instances)
    assert all(r["status"] == "scored" and r["origin"] == "MODALITY@127.0.0.1" for r in rows)
    for ds in instances:
        assert (tmp_path / "sr" / f"{ds.SOPInstanceUID}.dcm").is_file()


def test_instances_of_several_associations_are_scored_in_one_network_call(dicom_model, grays, tmp_path):
    """Spooled while the scorer is busy, the instances of three associations go through the network together."""
    instances = _study(grays, 9)
    processor = Processor(dicom_model, tmp_path)
    gate, batches = threading.Event(), []
    assess = processor.classifier.assess

    def recorded(batch, sources, *args, **kwargs):
        gate.wait(60)
        batches.append(len(sources))
        return assess(batch, sources, *args, **kwargs)

    processor.classifier.assess = recorded
    port = orthanc.free_port()
    with StorageNode(processor, port):
        def send(part):
            assoc = _sender(port).associate("127.0.0.1", port)
            assert all(assoc.send_c_store(ds).Status == 0 for ds in part)
            assoc.release()

        threads = [threading.Thread(target=send, args=(instances[i::3],)) for i in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        gate.set()
    # The first call takes what had arrived when the scorer started; everything sent meanwhile, from the
    # three associations, goes in the second.
    assert len(batches) == 2 and sum(batches) == 9, batches
    assert len(_worklist_rows(tmp_path)) == 9


def test_an_instance_scored_again_after_a_kill_keeps_one_sr_and_one_worklist_row(dicom_model, grays, tmp_path):
    """A node killed after an instance's results were written, before its spool file was removed, scores it
    again at the next start: the same SR, and no second worklist line."""
    import copy

    from pydicom.filebase import DicomBytesIO

    ds = _study(grays, 1)[0]
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    pydicom.filewriter.write_dataset(body, ds)
    spooled = spool_file(copy.deepcopy(ds.file_meta), body.getvalue(), "PACS@10.0.0.5", "2026-12-07T10:00:00+0000")
    first = Processor(dicom_model, tmp_path)
    first.process_many([Received(pydicom.dcmread(io.BytesIO(spooled)), spooled, "PACS@10.0.0.5",
                                 "2026-12-07T10:00:00+0000")])
    spool = Spool(tmp_path)
    spool.put(ds.SOPInstanceUID, spooled)  # killed before the removal: still spooled
    spool.close()

    again = Processor(dicom_model, tmp_path)  # the next start
    spool = Spool(tmp_path)
    Scorer(again, spool).start().close(timeout=60)
    spool.close()
    lines = (tmp_path / "worklist.csv").read_text().splitlines()
    assert [ds.SOPInstanceUID in line for line in lines[1:]] == [True]
    assert list((tmp_path / SPOOL_FOLDER).glob("*.dcm")) == []
    assert [p.name for p in (tmp_path / "sr").glob("*.dcm")] == [f"{ds.SOPInstanceUID}.dcm"]


def test_two_nodes_cannot_share_an_output_folder(dicom_model, tmp_path):
    first = StorageNode(Processor(dicom_model, tmp_path), orthanc.free_port()).start()
    try:
        with pytest.raises(ConfigError, match="another pneumoscan node uses this folder"):
            StorageNode(Processor(dicom_model, tmp_path), orthanc.free_port()).start()
    finally:
        first.stop()


def _start(command: list[str], port: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO / "tests")])}
    process = subprocess.Popen(command, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title="PROBE")
    ae.add_requested_context(Verification)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        assoc = ae.associate("127.0.0.1", port)
        if assoc.is_established:
            assoc.release()
            return process
        time.sleep(0.3)
    process.kill()
    raise AssertionError(f"the node did not listen on {port}: {log.read_text()[-2000:]}")


@pytest.mark.e2e  # runs the node as a child process, kills it with SIGKILL and starts it again
def test_a_node_killed_mid_study_scores_every_acknowledged_instance_once_when_started_again(dicom_model, grays,
                                                                                           tmp_path):
    instances = _study(grays, 10)
    out, port = tmp_path / "out", orthanc.free_port()
    slow = [sys.executable, str(HELPERS / "slow_node.py"), str(dicom_model), str(out), str(port), "0.5"]
    process = _start(slow, port, tmp_path / "first.log")
    acknowledged = []
    try:
        assoc = _sender(port).associate("127.0.0.1", port)
        assert assoc.is_established
        for ds in instances:
            if assoc.send_c_store(ds).Status == 0:
                acknowledged.append(ds.SOPInstanceUID)
        assoc.release()
        deadline = time.monotonic() + 60
        while len(list((out / SPOOL_FOLDER).glob("*.dcm"))) == len(instances) and time.monotonic() < deadline:
            time.sleep(0.05)  # until the first instance is scored and out of the spool ...
    finally:
        process.kill()  # ... while the others wait in it: SIGKILL, nothing runs after it
        process.wait(30)
    assert len(acknowledged) == len(instances)
    left = {p.stem for p in (out / SPOOL_FOLDER).glob("*.dcm")}
    assert left and left < set(acknowledged), "the kill came before any instance was scored, or after all"

    command = [sys.executable, "-m", "pneumoscan", "dicom", "listen", str(dicom_model), "--port", str(port),
               "--out", str(out)]
    process = _start(command, port, tmp_path / "second.log")
    try:
        deadline = time.monotonic() + 120
        while list((out / SPOOL_FOLDER).glob("*.dcm")) and time.monotonic() < deadline:
            time.sleep(0.1)
        # Appended as they are scored: one line per instance before the stop rewrites the file.
        counts = Counter(r["sop_instance_uid"] for r in _worklist_rows(out))
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)
    assert counts == Counter(acknowledged), (tmp_path / "second.log").read_text()[-3000:]
    assert "left in" in (tmp_path / "second.log").read_text()
    rows = _worklist_rows(out)
    assert sorted(r["sop_instance_uid"] for r in rows) == sorted(acknowledged)
    assert all(r["status"] == "scored" and r["origin"] == "MODALITY@127.0.0.1" for r in rows)
    for uid in acknowledged:
        sr = pydicom.dcmread(out / "sr" / f"{uid}.dcm")
        assert sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0] \
            .ReferencedSOPSequence[0].ReferencedSOPInstanceUID == uid


def test_a_spooled_file_that_cannot_be_read_is_set_aside_with_its_reason_and_the_others_scored(
        dicom_model, grays, tmp_path, caplog):
    from pydicom.filebase import DicomBytesIO

    ds = _study(grays, 1)[0]
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    pydicom.filewriter.write_dataset(body, ds)
    spool = Spool(tmp_path)
    spool.put(ds.SOPInstanceUID, spool_file(ds.file_meta, body.getvalue(), "PACS@10.0.0.5", "2026-12-07T10:00:00+0000"))
    damaged = spool.put("1.2.3.999", b"")  # emptied: a disk that lost what it had
    with caplog.at_level("ERROR", logger="pneumoscan.dicom"):
        Scorer(Processor(dicom_model, tmp_path), spool).start().close(timeout=60)
    spool.close()
    assert damaged.with_name(damaged.name + ".unreadable").is_file() and not damaged.exists()
    assert any(str(damaged) in m and "renamed" in m for m in caplog.messages)
    assert [r["sop_instance_uid"] for r in _worklist_rows(tmp_path)] == [ds.SOPInstanceUID]


def test_an_instance_that_cannot_be_spooled_is_answered_out_of_resources(dicom_model, grays, tmp_path, monkeypatch):
    """A full disk (mocked: it cannot be made here) at the spool: the sender is told 0xA700 and keeps the
    instance; nothing is scored or listed."""
    import errno

    import pneumoscan.dicom.spool as spool_module
    from pneumoscan._io import _output_error

    def full(path, data):
        raise _output_error(path, OSError(errno.ENOSPC, "No space left on device"))

    monkeypatch.setattr(spool_module, "write_synced", full)
    port = orthanc.free_port()
    with StorageNode(Processor(dicom_model, tmp_path), port):
        assoc = _sender(port).associate("127.0.0.1", port)
        assert assoc.send_c_store(_study(grays, 1)[0]).Status == 0xA700
        assoc.release()
    assert _worklist_rows(tmp_path) == []
