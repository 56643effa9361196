"""Throughput and latency of `pneumoscan dicom listen`: C-STORE in, scoring, SR back into a real Orthanc.

    .venv/bin/python bench/bench_dicom.py                      # the docs' figures: 200 instances, 4 associations
    .venv/bin/python bench/bench_dicom.py --instances 40       # a quick check
    .venv/bin/python bench/bench_dicom.py --model runs/latest --overlay

The node runs as its own process, started as a user starts it (`python -m pneumoscan dicom listen ...
--forward ORTHANC@127.0.0.1:PORT`), with a throw-away Orthanc (tests/orthanc.py) as the PACS the results go
back to. Four sender threads, each with its own association, send 16-bit CR instances made from the
full-resolution originals in ../shared/data/chest_xray_originals (else the 224 px images, else
synthetic ones) as fast as the node answers. Without --model the node serves the ONNX export of the
default training architecture with random weights (speed does not depend on the weights).

Figures: instances/s from the first C-STORE sent to the last SR stored in Orthanc; per instance, the time
from its C-STORE being sent to its SR being stored in Orthanc (p50, p99); and the time from the last
instance's C-STORE answer to its SR in Orthanc. Aim: at least 40 instances/s over 4 associations, p99 under 1 s, on 2 cores.
Senders, node and Orthanc share the machine's cores.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "tests"))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

import orthanc  # noqa: E402
from _common import default_architecture, random_run, resident_mib  # noqa: E402
from helpers import chest_dicoms  # noqa: E402

AIM_IPS, AIM_P99_S = 40.0, 1.0


def radiographs(data: Path, count: int) -> tuple[list[np.ndarray], str]:
    """Up to ``count`` 8-bit radiographs and a word on where they come from."""
    for folder, what in ((data / "chest_xray_originals", "full-resolution originals"),
                         (data / "chest_xray" / "train", "224 px images")):
        files = sorted(folder.rglob("*.jpeg"))
        if files:
            step = max(1, len(files) // count)
            return [np.asarray(Image.open(f).convert("L")) for f in files[::step][:count]], what
    from helpers.synthetic import write_synthetic_image

    with tempfile.TemporaryDirectory() as tmp:
        return [np.asarray(Image.open(write_synthetic_image(Path(tmp) / f"{i}.png", i % 2, seed=i, size=1024)))
                for i in range(min(count, 16))], "synthetic 1024 px images"


def instances(grays: list[np.ndarray], count: int) -> list:
    """``count`` 12-bit CR instances (MONOCHROME2, PA, chest), in studies of 4 instances."""
    out = []
    for i in range(count):
        if i % 4 == 0:
            base = chest_dicoms.study(f"BENCH-{i // 4:04d}", f"ACC-{i // 4:04d}")
        pixels = grays[i % len(grays)].astype(np.uint16) * 16
        out.append(chest_dicoms.instance(base, chest_dicoms.CR, "CR", i % 4 + 1, pixels, 12, ViewPosition="PA",
                                         BodyPartExamined="CHEST"))
    return out


def orthanc_id(ds) -> str:
    """Orthanc's id of an instance: the SHA-1 of its patient, study, series and instance identifiers."""
    digest = hashlib.sha1("|".join([ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID,
                                    ds.SOPInstanceUID]).encode()).hexdigest()
    return "-".join(digest[i:i + 8] for i in range(0, 40, 8))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=200)
    parser.add_argument("--associations", type=int, default=4)
    parser.add_argument("--model", help="run folder or .onnx (default: random weights, default architecture)")
    parser.add_argument("--overlay", action="store_true", help="also make and send Grad-CAM overlays")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    args = parser.parse_args()
    if (why := orthanc.missing()) is not None:
        sys.exit(f"bench_dicom: {why}")

    from pydicom.uid import ExplicitVRLittleEndian
    from pynetdicom import AE
    from pynetdicom.sop_class import ComputedRadiographyImageStorage

    from pneumoscan.dicom import Processor
    from pneumoscan.dicom.result_objects import structured_report
    from pneumoscan.inference.classifier import Prediction

    tmp = Path(tempfile.mkdtemp(prefix="bench-dicom-"))
    if args.model:
        model = Path(args.model)
    else:
        from pneumoscan.serving.export import export_onnx

        name, size = default_architecture()
        model = random_run(tmp / "run", name, size)
        export_onnx(model)
    grays, source = radiographs(args.data, 32)
    datasets = instances(grays, args.instances)
    sizes = [g.shape for g in grays]
    print(f"{len(datasets)} CR instances (12-bit) from {len(grays)} {source}, "
          f"{min(min(s) for s in sizes)}-{max(max(s) for s in sizes)} px a side; model {model}")

    # The SR of each instance has a UID derived from it and the model: computed here to watch for it.
    meta = Processor(model, tmp / "probe").meta
    expected = {}
    for ds in datasets:
        sr = structured_report(ds, Prediction(file="", probability=0.5, label=meta.class_names[0], threshold=0.5,
                                                 model=meta.name, version=meta.version), meta)
        expected[orthanc_id(sr)] = ds.SOPInstanceUID

    node_port = orthanc.free_port()
    with orthanc.Orthanc(tmp / "orthanc") as pacs:
        env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
        command = [sys.executable, "-m", "pneumoscan", "dicom", "listen", str(model), "--port", str(node_port),
                   "--host", "127.0.0.1", "--out", str(tmp / "out"), "--forward",
                   f"{orthanc.AE_TITLE}@127.0.0.1:{pacs.dicom_port}"] + (["--overlay"] if args.overlay else [])
        log = open(tmp / "node.log", "w")  # noqa: SIM115 - the node's log for its lifetime
        node = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        ae = AE(ae_title="BENCH")
        ae.add_requested_context(ComputedRadiographyImageStorage, ExplicitVRLittleEndian)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            probe = ae.associate("127.0.0.1", node_port)
            if probe.is_established:
                probe.release()
                break
            time.sleep(0.3)
        else:
            node.kill()
            sys.exit(f"bench_dicom: the node did not start; see {tmp / 'node.log'}")

        sent: dict[str, float] = {}
        answered: dict[str, float] = {}
        stored: dict[str, float] = {}
        failures: list[str] = []
        done = threading.Event()

        def watch() -> None:
            since = pacs.client.get("/changes", params={"last": 1}).json()["Last"]
            while not done.is_set():
                changes = pacs.client.get("/changes", params={"since": since, "limit": 1000}).json()
                now = time.monotonic()
                for change in changes["Changes"]:
                    if change["ChangeType"] == "NewInstance" and change["ID"] in expected:
                        stored.setdefault(expected[change["ID"]], now)
                since = changes["Last"]
                if len(stored) == len(datasets):
                    return
                time.sleep(0.01)

        def send(part: list) -> None:
            assoc = ae.associate("127.0.0.1", node_port)
            if not assoc.is_established:
                failures.append("association refused")
                return
            for ds in part:
                sent[ds.SOPInstanceUID] = time.monotonic()
                status = assoc.send_c_store(ds)
                answered[ds.SOPInstanceUID] = time.monotonic()
                if getattr(status, "Status", None) != 0:
                    failures.append(ds.SOPInstanceUID)
            assoc.release()

        memory: list[tuple[int, float]] = []  # (instances answered, the node's resident MiB)

        def sample_memory() -> None:
            while not done.is_set() and node.poll() is None:
                memory.append((len(answered), resident_mib(node.pid)))
                time.sleep(1.0)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        threading.Thread(target=sample_memory, daemon=True).start()
        start = time.monotonic()
        senders = [threading.Thread(target=send, args=(datasets[i::args.associations],))
                   for i in range(args.associations)]
        for thread in senders:
            thread.start()
        for thread in senders:
            thread.join()
        watcher.join(timeout=120)
        done.set()
        node.send_signal(signal.SIGINT)
        try:
            node.wait(60)
        except subprocess.TimeoutExpired:
            node.kill()
        log.close()

    missing = len(datasets) - len(stored)
    latencies = np.array([stored[uid] - sent[uid] for uid in stored])
    last = max(answered, key=answered.get)
    end = max(stored.values()) if stored else time.monotonic()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs (busy or not: see the load) "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"instances/s (first C-STORE sent to last SR stored in Orthanc), {args.associations} associations: "
          f"{len(stored) / (end - start):.1f}  (aim >= {AIM_IPS:.0f})")
    if len(latencies):
        print(f"C-STORE sent -> SR stored in Orthanc: p50 {np.percentile(latencies, 50):.3f} s, "
              f"p99 {np.percentile(latencies, 99):.3f} s, max {latencies.max():.3f} s  (aim p99 < {AIM_P99_S:.0f} s)")
    if last in stored:
        print(f"last instance answered -> its SR stored in Orthanc: {stored[last] - answered[last]:.3f} s")
    print(f"C-STORE failures: {len(failures)}; SRs missing in Orthanc: {missing}")
    early = [mib for count, mib in memory if count >= len(datasets) // 10]
    if early:
        print(f"node resident memory: {early[0]:,.0f} MiB once {len(datasets) // 10} instances were answered, "
              f"{memory[-1][1]:,.0f} MiB at the end (largest {max(m for _, m in memory):,.0f} MiB)")
    return 0 if not failures and not missing else 1


if __name__ == "__main__":
    sys.exit(main())
