"""`dicom listen` against a real PACS: Orthanc sends a study with C-STORE, the node scores the chest
radiographs, refuses the rest with their reason and sends SRs and overlays back into Orthanc."""

from __future__ import annotations

import csv
import io
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pydicom
import pytest

import orthanc
import pneumoscan
from helpers import chest_dicoms
from pneumoscan.cli import main
from pneumoscan.dicom import Peer, Processor, StorageNode
from pneumoscan.dicom.result_objects import PROBABILITY

REPO = Path(__file__).resolve().parents[2]


def _sr_probability(sr) -> tuple[str, float]:
    source = next(i for i in sr.ContentSequence if i.ValueType == "IMAGE").ReferencedSOPSequence[0]
    number = next(i for i in sr.ContentSequence
                  if i.ValueType == "NUM" and i.ConceptNameCodeSequence[0].CodeValue == PROBABILITY.value)
    return source.ReferencedSOPInstanceUID, float(number.MeasuredValueSequence[0].NumericValue)


@pytest.fixture(scope="module")
def corpus(grays):
    return chest_dicoms.corpus(grays)


@pytest.fixture(scope="module")
def files(corpus, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("corpus")
    out = {}
    for name, ds in corpus.items():
        out[name] = folder / f"{name}.dcm"
        out[name].write_bytes(chest_dicoms.encode(ds))
    return out


@pytest.mark.e2e  # starts a PACS
def test_orthanc_study_sent_to_the_node_comes_back_as_srs_equal_to_predict(orthanc_ready, dicom_model, corpus, files,
                                                                          tmp_path, caplog):
    node_port = orthanc.free_port()
    out = tmp_path / "out"
    with orthanc.Orthanc(tmp_path / "orthanc", modalities={"pneumoscan": ("PNEUMOSCAN", node_port)}) as pacs:
        ids = {name: pacs.upload(files[name].read_bytes()) for name in corpus}
        processor = Processor(dicom_model, out, overlay=True)
        peer = Peer("ORTHANC", "127.0.0.1", pacs.dicom_port)
        with caplog.at_level("INFO", logger="pneumoscan.dicom"), StorageNode(processor, node_port, forward=peer) as node:
            # Three concurrent associations, each mixing good and bad instances of the one study.
            names = list(corpus)
            groups = [names[i::3] for i in range(3)]
            answers: list = [None] * 3

            def send(i: int) -> None:
                answers[i] = pacs.send_to("pneumoscan", [ids[n] for n in groups[i]])

            threads = [threading.Thread(target=send, args=(i,)) for i in range(3)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(180)
            assert all(answer is not None for answer in answers), "a C-STORE job of Orthanc did not finish"
            assert node.received == len(corpus)  # every instance acknowledged, bad ones included
            good = len(chest_dicoms.GOOD)
            srs = [s for s in pacs.wait_for("SR", good + 1) if s != ids["report"]]
            overlays = pacs.wait_for("OT", good)
        assert len(srs) == good and len(overlays) == good, pacs.tail()

        expected = {row.source: row for row in pneumoscan.load(dicom_model).predict([files[n] for n in chest_dicoms.GOOD])}
        probabilities = {}
        for sr_id in srs:
            sr = pydicom.dcmread(io.BytesIO(pacs.file(sr_id)))
            uid, probability = _sr_probability(sr)
            probabilities[uid] = probability
            assert sr.StudyInstanceUID == corpus["cr-mono2-12bit"].StudyInstanceUID
            assert sr.PatientID == "PAT-0001"
        for name in chest_dicoms.GOOD:
            assert probabilities[corpus[name].SOPInstanceUID] == pytest.approx(
                expected[str(files[name])].probability, abs=1e-6), name
        for overlay_id in overlays:
            sc = pydicom.dcmread(io.BytesIO(pacs.file(overlay_id)))
            assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID in probabilities

    rows = list(csv.DictReader(io.StringIO((out / "worklist.csv").read_text())))
    assert len(rows) == len(corpus)
    refused = {r["sop_instance_uid"]: r["reason"] for r in rows if r["status"] == "refused"}
    for name, word in chest_dicoms.BAD.items():
        assert word in refused[corpus[name].SOPInstanceUID], name
        assert any(corpus[name].SOPInstanceUID in m and word in m for m in caplog.messages), name
    scored = [float(r["probability"]) for r in rows if r["status"] == "scored"]
    assert scored == sorted(scored, reverse=True) and len(scored) == len(chest_dicoms.GOOD)


@pytest.mark.e2e  # runs `pneumoscan dicom listen` in its own process and stops it with SIGTERM
def test_listen_command_scores_an_instance_and_stops_cleanly_on_sigterm(dicom_model, corpus, tmp_path):
    """The real command in its own process: C-ECHO, one C-STORE (pynetdicom as the sender), SIGTERM."""
    from pynetdicom import AE
    from pynetdicom.sop_class import ComputedRadiographyImageStorage, Verification

    port, out = orthanc.free_port(), tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    command = [sys.executable, "-m", "pneumoscan", "dicom", "listen", str(dicom_model), "--port", str(port),
               "--host", "127.0.0.1", "--out", str(out)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ae = AE(ae_title="TESTSCU")
        ae.add_requested_context(Verification)
        ae.add_requested_context(ComputedRadiographyImageStorage, corpus["cr-mono2-12bit"].file_meta.TransferSyntaxUID)
        deadline = time.monotonic() + 120
        assoc = ae.associate("127.0.0.1", port)
        while not assoc.is_established and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.3)
            assoc = ae.associate("127.0.0.1", port)
        assert assoc.is_established, f"the node did not listen on {port}"
        assert assoc.send_c_echo().Status == 0
        assert assoc.send_c_store(corpus["cr-mono2-12bit"]).Status == 0
        assert assoc.send_c_store(corpus["lateral"]).Status == 0  # refused, yet acknowledged
        assoc.release()
    finally:
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert (out / "sr" / f"{corpus['cr-mono2-12bit'].SOPInstanceUID}.dcm").is_file()
    assert "lateral" in stderr and "received 2 instance(s)" in stderr
    assert "NOT a medical device" in stderr


def test_listen_refuses_a_bad_forward_address_or_a_busy_port_in_one_line(dicom_model, tmp_path, capsys):
    assert main(["dicom", "listen", str(dicom_model), "--forward", "ORTHANC:4242", "--out", str(tmp_path)]) == 2
    assert "AET@HOST:PORT" in capsys.readouterr().err
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        processor = Processor(dicom_model, tmp_path)
        with pytest.raises(pneumoscan.errors.ConfigError, match=f"--port {port}"):
            StorageNode(processor, port, host="127.0.0.1").start()


def test_results_that_cannot_be_forwarded_are_kept_and_listed_and_the_instance_still_acknowledged(dicom_model, corpus,
                                                                                                 tmp_path, caplog):
    from pynetdicom import AE
    from pynetdicom.sop_class import ComputedRadiographyImageStorage

    nobody = Peer("PACS", "127.0.0.1", orthanc.free_port())  # nothing listens there
    port = orthanc.free_port()
    node = StorageNode(Processor(dicom_model, tmp_path), port, forward=nobody, retries=1).start()
    try:
        ae = AE(ae_title="TESTSCU")
        ae.add_requested_context(ComputedRadiographyImageStorage, corpus["cr-mono2-12bit"].file_meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", port)
        assert assoc.is_established
        assert assoc.send_c_store(corpus["cr-mono2-12bit"]).Status == 0
        assoc.release()
    finally:
        with caplog.at_level("ERROR", logger="pneumoscan.dicom"):
            node.stop()
    sr = tmp_path / "sr" / f"{corpus['cr-mono2-12bit'].SOPInstanceUID}.dcm"
    assert sr.is_file() and node.forwarder.failed == [str(sr)]
    assert any(str(sr) in m and "could not send" in m for m in caplog.messages)


def test_half_open_connections_from_two_addresses_do_not_lock_other_peers_out(dicom_model, tmp_path, caplog):
    """Two addresses open as many connections as they may (8 each, 16 in all: the node's maximum) and
    never send an association request; a third peer's C-ECHOs are all answered meanwhile."""
    import socket

    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    from pneumoscan.dicom.limits import Limits

    port = orthanc.free_port()
    limits = Limits(pdu_timeout=1.5, max_associations=16, max_associations_per_peer=8)
    held: list[socket.socket] = []
    with caplog.at_level("WARNING", logger="pneumoscan.dicom"), \
            StorageNode(Processor(dicom_model, tmp_path), port, limits=limits):
        try:
            for address in ("127.0.0.2", "127.0.0.3"):
                for _ in range(limits.max_associations_per_peer):
                    held.append(socket.create_connection(("127.0.0.1", port), source_address=(address, 0)))
            time.sleep(0.3)  # the node has taken them all
            ae = AE(ae_title="TESTSCU")
            ae.add_requested_context(Verification)
            answered = 0
            for _ in range(10):
                assoc = ae.associate("127.0.0.1", port, bind_address=("127.0.0.1", 0))
                if assoc.is_established:
                    answered += assoc.send_c_echo().Status == 0
                    assoc.release()
            assert answered == 10
            # The silent connections are closed once the time for a request has passed.
            time.sleep(limits.pdu_timeout + 0.5)
            for connection in held:
                connection.settimeout(2)
                assert connection.recv(1) == b""
        finally:
            for connection in held:
                connection.close()
    assert any("no association request within 1.5 s" in m for m in caplog.messages)


def test_a_newline_in_a_uid_cannot_forge_a_log_line_of_the_dicom_libraries(dicom_model, corpus, tmp_path, caplog):
    """pynetdicom, pydicom and highdicom log a received UID as it is; what reaches the log is escaped, and
    highdicom's INFO lines (one per module copied into each result) are left out."""
    import copy
    import warnings

    from pynetdicom import AE
    from pynetdicom.sop_class import ComputedRadiographyImageStorage

    ds = copy.deepcopy(corpus["cr-mono2-12bit"])
    ds.SOPInstanceUID = "1.2.3\nFORGED scored instance 1.2.4: p(pneumonia) 0.0000"
    port = orthanc.free_port()
    with caplog.at_level("DEBUG"), StorageNode(Processor(dicom_model, tmp_path), port):
        ae = AE(ae_title="TESTSCU")
        ae.add_requested_context(ComputedRadiographyImageStorage, ds.file_meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", port)
        assert assoc.is_established
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about the UID as well
            assert assoc.send_c_store(ds).Status == 0
        assoc.release()
    libraries = [r for r in caplog.records if r.name.split(".")[0] in ("pynetdicom", "pydicom", "highdicom")]
    assert any("FORGED" in r.getMessage() for r in libraries)  # they did log the UID ...
    assert not any("\n" in r.getMessage() for r in caplog.records)  # ... escaped
    assert not any(r.name.startswith("highdicom") and r.levelname == "INFO" for r in caplog.records)


def _sr(**elements) -> pydicom.Dataset:
    """A minimal SR data set with a new SOP Instance UID, and ``elements``, as the forwarder sends it."""
    from pynetdicom.sop_class import ComprehensiveSRStorage

    sr = pydicom.Dataset()
    sr.SOPClassUID, sr.SOPInstanceUID, sr.PatientID = ComprehensiveSRStorage, pydicom.uid.generate_uid(), "P1"
    for keyword, value in elements.items():
        setattr(sr, keyword, value)
    sr.file_meta = pydicom.dataset.FileMetaDataset()
    sr.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    return sr


def test_the_forwarder_keeps_one_association_per_thread_open_with_nagle_off(tmp_path):
    """Results are sent over associations kept open between batches, their sockets without Nagle's delay (a
    C-STORE is two PDUs before its answer: with Nagle on, each object waited for the peer's delayed ACK)."""
    import socket

    from pynetdicom import AE, evt
    from pynetdicom.sop_class import ComprehensiveSRStorage

    from pneumoscan.dicom.node import Forwarder

    opened, stored = [], threading.Event()
    scp = AE(ae_title="PACS")
    scp.add_supported_context(ComprehensiveSRStorage)
    handlers = [(evt.EVT_CONN_OPEN, lambda event: opened.append(event.address)),
                (evt.EVT_C_STORE, lambda event: (stored.set(), 0x0000)[1])]
    port = orthanc.free_port()
    server = scp.start_server(("127.0.0.1", port), block=False, evt_handlers=handlers)
    forwarder = Forwarder(Peer("PACS", "127.0.0.1", port), "PNEUMOSCAN", associations=1)
    try:
        sr = _sr()
        for i in range(3):  # three batches, one after the other
            stored.clear()
            forwarder.put([sr], [tmp_path / f"sr{i}.dcm"])
            assert stored.wait(10)
            time.sleep(0.2)
        assert forwarder.sent == 3 and len(opened) == 1  # one association for all three
        client = next(a for a in forwarder.ae.active_associations)
        assert client.dul.socket.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        forwarder.close()
        server.shutdown()


def _delayed_acks() -> int | None:
    """Linux's count of acknowledgements its delayed-ACK timer sent (TcpExt DelayedACKs), None elsewhere."""
    try:
        names, values = [line.split() for line in Path("/proc/net/netstat").read_text().splitlines()
                         if line.startswith("TcpExt:")][:2]
    except (OSError, ValueError):
        return None
    return int(values[names.index("DelayedACKs")]) if "DelayedACKs" in names else None


@pytest.mark.e2e  # starts a PACS
def test_orthanc_answers_to_the_forwarder_are_acknowledged_at_once(orthanc_ready, tmp_path):
    """Orthanc (DCMTK) writes each C-STORE answer in two pieces with Nagle's algorithm on: unless this side
    acknowledges the first piece at once, the second waits for Linux's delayed-ACK timer (40 ms an object).
    Counted on the kernel's own counter of delayed ACKs, not timed."""
    import socket

    from pneumoscan.dicom.node import Forwarder

    if not hasattr(socket, "TCP_QUICKACK") or _delayed_acks() is None:
        pytest.skip("Linux's TCP_QUICKACK and its delayed-ACK counter are needed")
    with orthanc.Orthanc(tmp_path / "orthanc") as pacs:
        forwarder = Forwarder(Peer(orthanc.AE_TITLE, "127.0.0.1", pacs.dicom_port), "PNEUMOSCAN", associations=1)
        study, series = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
        try:
            for i in range(21):
                if i == 1:  # the first opens the association
                    before = _delayed_acks()
                sr = _sr(StudyInstanceUID=study, SeriesInstanceUID=series, Modality="SR")
                sent = threading.Event()
                forwarder.put([sr], [tmp_path / f"sr{i}.dcm"], sent.set)
                assert sent.wait(30)
            delayed = _delayed_acks() - before
        finally:
            forwarder.close()
        assert forwarder.sent == 21 and not forwarder.failed, pacs.tail()
    assert delayed < 10  # 20 (one an object) without the quick acknowledgement; other traffic may add a few


def test_a_burst_of_results_goes_out_over_every_forwarding_association_at_once(tmp_path):
    """Results queued together (a batch scored across associations) are sent concurrently, one instance's
    objects per association, not one after another over whichever association woke first."""
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import ComprehensiveSRStorage

    from pneumoscan.dicom.node import Forwarder

    lock, all_in = threading.Lock(), threading.Event()
    in_flight, most, associations = [0], [0], set()

    def on_store(event) -> int:
        with lock:
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
            associations.add(event.assoc.requestor.port)
            if in_flight[0] == 4:
                all_in.set()
        all_in.wait(3)  # the PACS is slow: each store waits for the others (3 s at most)
        with lock:
            in_flight[0] -= 1
        return 0x0000

    scp = AE(ae_title="PACS")
    scp.add_supported_context(ComprehensiveSRStorage)
    port = orthanc.free_port()
    server = scp.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    forwarder = Forwarder(Peer("PACS", "127.0.0.1", port), "PNEUMOSCAN", associations=4)
    done = threading.Semaphore(0)
    try:
        for i in range(4):  # as the scorer hands over a batch: one put after the other
            forwarder.put([_sr()], [tmp_path / f"sr{i}.dcm"], done.release)
        for _ in range(4):
            assert done.acquire(timeout=30)
        assert forwarder.sent == 4 and not forwarder.failed
        assert most[0] == 4 and len(associations) == 4
    finally:
        forwarder.close()
        server.shutdown()
