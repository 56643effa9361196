"""What a hostile or broken sender may cost the node: trickling sockets, oversized PDUs and data sets, and
too many associations from one peer are cut off while receiving, and the node goes on answering."""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest

import orthanc
from helpers import chest_dicoms
from pneumoscan.dicom import Processor, StorageNode
from pneumoscan.dicom.limits import Limits

REPO = Path(__file__).resolve().parents[2]


def _ae():
    from pynetdicom import AE
    from pynetdicom.sop_class import ComputedRadiographyImageStorage, Verification

    ae = AE(ae_title="MODALITY")
    ae.acse_timeout = ae.network_timeout = 5
    ae.add_requested_context(Verification)
    ae.add_requested_context(ComputedRadiographyImageStorage, pydicom.uid.ExplicitVRLittleEndian)
    return ae


def _radiograph(rows: int, columns: int):
    pixels = (np.arange(rows * columns, dtype=np.uint32).reshape(rows, columns) % 4096).astype(np.uint16)
    return chest_dicoms.instance(chest_dicoms.study(), chest_dicoms.CR, "CR", 1, pixels, 12, ViewPosition="PA",
                                 BodyPartExamined="CHEST")


def _ends(assoc, within: float = 10.0) -> bool:
    """Whether the association is gone (aborted by the node) within ``within`` seconds."""
    deadline = time.monotonic() + within
    while assoc.is_established and time.monotonic() < deadline:
        time.sleep(0.05)
    return not assoc.is_established


def _echo(port: int) -> bool:
    assoc = _ae().associate("127.0.0.1", port)
    if not assoc.is_established:
        return False
    try:
        return assoc.send_c_echo().get("Status") == 0
    finally:
        assoc.release()


def test_twenty_trickling_sockets_cannot_keep_a_c_echo_out_for_30_seconds(dicom_model, tmp_path):
    """Each socket sends the 6-byte header of an A-ASSOCIATE-RQ, then one byte every 2 s, as long as the
    node lets it; the node keeps its default limits."""
    port = orthanc.free_port()
    stop = threading.Event()

    def trickle() -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(struct.pack(">BBL", 0x01, 0, 300))
            while not stop.wait(2.0):
                try:
                    sock.sendall(b"\0")
                except OSError:
                    return  # dropped by the node

    with StorageNode(Processor(dicom_model, tmp_path), port):
        trickles = [threading.Thread(target=trickle, daemon=True) for _ in range(20)]
        for thread in trickles:
            thread.start()
        time.sleep(1.0)  # every trickle holds its connection before the first echo
        start = time.monotonic()
        answered = False
        while not answered and time.monotonic() - start < 35:
            answered = _echo(port)
            if not answered:
                time.sleep(1.0)
        waited = time.monotonic() - start
        stop.set()
    assert answered and waited < 30, f"C-ECHO unanswered for {waited:.0f} s"


def test_a_peer_gets_at_most_its_share_of_associations(dicom_model, tmp_path):
    port = orthanc.free_port()
    with StorageNode(Processor(dicom_model, tmp_path), port, limits=Limits(max_associations_per_peer=2)):
        first, second = _ae().associate("127.0.0.1", port), _ae().associate("127.0.0.1", port)
        assert first.is_established and second.is_established
        third = _ae().associate("127.0.0.1", port)
        assert not third.is_established
        first.release()
        deadline = time.monotonic() + 10
        while not (answered := _echo(port)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert answered  # a freed slot is given to the peer again
        second.release()


def test_a_data_set_over_the_limit_is_aborted_while_arriving_and_the_node_goes_on(dicom_model, tmp_path, caplog):
    port = orthanc.free_port()
    processor = Processor(dicom_model, tmp_path)
    big, small = _radiograph(1000, 2000), _radiograph(256, 256)  # 4 MB, 128 kB
    with caplog.at_level("WARNING", logger="pneumoscan.dicom"), \
            StorageNode(processor, port, limits=Limits(max_dataset_bytes=1024 * 1024)) as node:
        assoc = _ae().associate("127.0.0.1", port)
        assert assoc.is_established
        status = assoc.send_c_store(big)
        assert status.get("Status") is None and _ends(assoc)  # aborted, not acknowledged
        assert node.received == 0
        again = _ae().associate("127.0.0.1", port)
        assert again.is_established and again.send_c_store(small).Status == 0
        again.release()
    assert any("data set over the limit of 1,048,576 bytes" in m for m in caplog.messages)
    assert not (tmp_path / "sr" / f"{big.SOPInstanceUID}.dcm").exists()


def test_a_pdu_larger_than_the_advertised_maximum_is_aborted(dicom_model, tmp_path, caplog):
    port = orthanc.free_port()
    with caplog.at_level("WARNING", logger="pneumoscan.dicom"), StorageNode(Processor(dicom_model, tmp_path), port):
        assoc = _ae().associate("127.0.0.1", port)
        assert assoc.is_established and assoc.acceptor.maximum_length == 64 * 1024
        from pynetdicom.pdu_primitives import MaximumLengthNotification

        # A sender that ignores what the node advertised: its PDUs are 1 MiB.
        next(i for i in assoc.acceptor.user_information if isinstance(i, MaximumLengthNotification)) \
            .maximum_length_received = 1024 * 1024
        assert assoc.send_c_store(_radiograph(1000, 1000)).get("Status") is None and _ends(assoc)
        # An association request that says it is 100 MB long is cut off at its header.
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(struct.pack(">BBL", 0x01, 0, 100 * 2**20))
            answer = sock.recv(64)
        assert answer[:1] == b"\x07"  # A-ABORT
    assert any("over the limit of 65,536" in m for m in caplog.messages)
    assert any("PDU of 104,857,600 bytes" in m for m in caplog.messages)


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@pytest.mark.e2e  # runs `pneumoscan dicom listen` in its own process
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc to read the node's peak memory")
def test_a_large_c_store_is_refused_with_the_node_under_its_memory_bound(dicom_model, tmp_path):
    port = orthanc.free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    command = [sys.executable, "-m", "pneumoscan", "dicom", "listen", str(dicom_model), "--port", str(port),
               "--out", str(tmp_path / "out"), "--max-dataset-mib", "4"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    big = _radiograph(4096, 8192)  # 64 MiB of pixels, under the pixel limit: only the size limit stops it
    try:
        deadline = time.monotonic() + 120
        while not _echo(port):
            assert process.poll() is None and time.monotonic() < deadline, "the node did not start"
            time.sleep(0.5)
        before = _peak_rss_mib(process.pid)
        assoc = _ae().associate("127.0.0.1", port)
        assert assoc.is_established
        assert assoc.send_c_store(big).get("Status") != 0
        after = _peak_rss_mib(process.pid)
        assert _echo(port)  # still answering
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    assert "data set over the limit" in stderr
    assert after - before < 32, f"the node's peak memory grew by {after - before:.0f} MiB for a refused instance"


def test_limits_out_of_range_are_a_one_line_error(tmp_path, capsys):
    from pneumoscan.cli import main

    assert main(["dicom", "listen", str(tmp_path), "--max-pdu-kib", "1", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "limits out of range" in err and "PDU >= 4 KiB" in err and "\n" not in err


def test_pull_refuses_an_instance_with_too_many_sequence_items_before_the_client_parses_it(dicom_model, tmp_path,
                                                                                          monkeypatch):
    """dicomweb-client parses each instance it fetches with pydicom: the pull counts the items first (the
    limit is lowered here so that the test's own DICOMweb server can read the instance's header)."""
    import io

    from helpers import bombs
    from helpers.dicomweb_server import DicomWebServer
    from pneumoscan.data import dicom_scan
    from pneumoscan.dicom.web import pull
    from pneumoscan.errors import ImageReadError

    monkeypatch.setattr(dicom_scan, "MAX_DICOM_ELEMENTS", 500)
    bomb = bombs.sequence_bomb(1000)
    study = str(pydicom.dcmread(io.BytesIO(bomb), stop_before_pixels=True).StudyInstanceUID)
    parsed, real_dcmread = [], pydicom.dcmread

    def dcmread(*args, **kwargs):  # the client reads whole instances; the test server only headers
        if not kwargs.get("stop_before_pixels"):
            parsed.append(args)
        return real_dcmread(*args, **kwargs)

    monkeypatch.setattr(pydicom, "dcmread", dcmread)
    with DicomWebServer({study: [bomb]}) as server, \
            pytest.raises(ImageReadError, match="an instance: refused: the DICOM data set holds over 500 elements"):
        pull(Processor(dicom_model, tmp_path), server.url, study=study)
    assert not parsed
