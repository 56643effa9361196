"""Throughput of `pneumoscan dicom listen` over 1 and 4 associations: C-STORE in, SR back into a real Orthanc.

    .venv/bin/python bench/bench_dicom.py                         # the aim's case: 80 CR instances at 224 px, 1 and 4 associations
    .venv/bin/python bench/bench_dicom.py --instances 16          # a quick check
    .venv/bin/python bench/bench_dicom.py --originals --model runs/latest --overlay

For each number of associations, the node runs as its own process, started as a user starts it
(`python -m pneumoscan dicom listen ... --forward ORTHANC@127.0.0.1:PORT`, a fresh --out), with one
throw-away Orthanc (tests/orthanc.py) as the PACS the results go back to. Sender threads, each with its own
association, send 12-bit CR instances made from the 224 px images in ../shared/data/chest_xray (with
--originals the full-resolution ones, else synthetic ones) as fast as the node answers. Without --model
the node serves the ONNX export of the default training architecture with random weights (speed does not
depend on the weights).

Figures per run: acknowledged/s (first C-STORE sent to the last answered: the node answers once an
instance is spooled), instances/s (first C-STORE sent to the last SR stored in Orthanc), per instance the
time from its C-STORE being sent to its SR stored in Orthanc (p50, p99), and where an instance's time
goes inside the node, as the node prints it when it stops (receive: checks and spooling in the
association's thread; spool wait; decode; network; sr: the SR made and encoded; write: result files and
worklist rows synced; send: C-STORE to Orthanc). Aim: at least 40 instances/s over 4 associations at
224 px, 4 associations never slower than 1, on 2 quiet cores. Senders, node and Orthanc share the cores.
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
import pneumoscan  # noqa: E402
from _common import cpu_seconds, default_architecture, random_run, resident_mib  # noqa: E402
from helpers import chest_dicoms  # noqa: E402

AIM_IPS = 40.0


def radiographs(data: Path, count: int, originals: bool) -> tuple[list[np.ndarray], str]:
    """Up to ``count`` 8-bit radiographs and a word on where they come from."""
    folder, what = ((data / "chest_xray_originals", "full-resolution originals") if originals
                    else (data / "chest_xray" / "train", "224 px images"))
    files = sorted(folder.rglob("*.jpeg"))
    if files:
        step = max(1, len(files) // count)
        return [np.asarray(Image.open(f).convert("L")) for f in files[::step][:count]], what
    from helpers.synthetic import write_synthetic_image

    size = 1024 if originals else 224
    with tempfile.TemporaryDirectory() as tmp:
        return [np.asarray(Image.open(write_synthetic_image(Path(tmp) / f"{i}.png", i % 2, seed=i, size=size)))
                for i in range(min(count, 16))], f"synthetic {size} px images"


def instances(grays: list[np.ndarray], count: int) -> list:
    """``count`` 12-bit CR instances (MONOCHROME2, PA, chest), in studies of 4 instances, new UIDs each call."""
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


def run(args, model: Path, pacs, datasets: list, associations: int, folder: Path) -> dict:
    """One node, ``associations`` senders sending ``datasets``: the figures of the run."""
    from pydicom.uid import ExplicitVRLittleEndian
    from pynetdicom import AE
    from pynetdicom.sop_class import ComputedRadiographyImageStorage

    from pneumoscan.dicom.result_objects import structured_report
    from pneumoscan.inference.classifier import Prediction

    # The SR of each instance has a UID derived from it and the model: computed here to watch for it.
    meta = pneumoscan.load(model).meta
    expected = {}
    for ds in datasets:
        sr = structured_report(ds, Prediction(file="", probability=0.5, label=meta.class_names[0], threshold=0.5,
                                                 model=meta.name, version=meta.version), meta)
        expected[orthanc_id(sr)] = ds.SOPInstanceUID
    node_port = orthanc.free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    command = [sys.executable, "-m", "pneumoscan", "dicom", "listen", str(model), "--port", str(node_port),
               "--host", "127.0.0.1", "--out", str(folder / "out"), "--forward",
               f"{orthanc.AE_TITLE}@127.0.0.1:{pacs.dicom_port}"] + (["--overlay"] if args.overlay else [])
    folder.mkdir(parents=True, exist_ok=True)
    log_file = folder / "node.log"
    with log_file.open("w") as log:
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
        sys.exit(f"bench_dicom: the node did not start; see {log_file}")

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
            time.sleep(0.05)  # Orthanc and the node share the cores: asked 20 times a second, not 100

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

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    peak = [0.0]  # the node's largest resident memory, MiB

    def sample_memory() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], resident_mib(node.pid))  # NaN once it ended: kept out by max
            time.sleep(0.5)

    threading.Thread(target=sample_memory, daemon=True).start()
    processes = {"node": node.pid, "Orthanc": pacs.process.pid, "senders": os.getpid()}
    cpu_before = {name: cpu_seconds(pid) for name, pid in processes.items()}
    start = time.monotonic()
    senders = [threading.Thread(target=send, args=(datasets[i::associations],)) for i in range(associations)]
    for thread in senders:
        thread.start()
    for thread in senders:
        thread.join()
    watcher.join(timeout=300)
    # CPU used from the first C-STORE to the last SR stored, per instance: whether the 2 cores bound the run
    cpu = {name: (cpu_seconds(pid) - cpu_before[name]) / len(datasets) for name, pid in processes.items()}
    done.set()
    node.send_signal(signal.SIGINT)
    try:
        node.wait(120)
    except subprocess.TimeoutExpired:
        node.kill()
    lines = log_file.read_text(errors="replace").splitlines()
    stages = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("time per instance:")),
                  "not printed; the node's last lines: " + " | ".join(lines[-4:]))
    latencies = np.array([stored[uid] - sent[uid] for uid in stored]) if stored else np.zeros(0)
    end = max(stored.values()) if stored else time.monotonic()
    return {"associations": associations, "acknowledged/s": len(answered) / (max(answered.values()) - start),
            "instances/s": len(stored) / (end - start), "latencies": latencies, "stages": stages,
            "failures": len(failures), "missing": len(datasets) - len(stored), "peak MiB": peak[0], "cpu": cpu}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=80)
    parser.add_argument("--associations", default="1,4", help="comma-separated: one run per number")
    parser.add_argument("--model", help="run folder or .onnx (default: random weights, default architecture)")
    parser.add_argument("--overlay", action="store_true", help="also make and send Grad-CAM overlays")
    parser.add_argument("--originals", action="store_true", help="the full-resolution originals, not the 224 px images")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    args = parser.parse_args()
    if (why := orthanc.missing()) is not None:
        sys.exit(f"bench_dicom: {why}")

    tmp = Path(tempfile.mkdtemp(prefix="bench-dicom-"))
    if args.model:
        model = Path(args.model)
    else:
        from pneumoscan.serving.export import export_onnx

        name, size = default_architecture()
        model = random_run(tmp / "run", name, size)
        export_onnx(model)
    grays, source = radiographs(args.data, 32, args.originals)
    sizes = [g.shape for g in grays]
    print(f"{args.instances} CR instances (12-bit) per run from {len(grays)} {source}, "
          f"{min(min(s) for s in sizes)}-{max(max(s) for s in sizes)} px a side; model {model}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f} (busy or not: see the load)")
    results = []
    with orthanc.Orthanc(tmp / "orthanc") as pacs:
        for associations in (int(n) for n in args.associations.split(",")):
            result = run(args, model, pacs, instances(grays, args.instances), associations, tmp / f"run-{associations}")
            results.append(result)
            latencies = result["latencies"]
            print(f"\n{associations} association(s): {result['instances/s']:.1f} instances/s (first C-STORE sent to last "
                  f"SR stored in Orthanc; aim >= {AIM_IPS:.0f} over 4), acknowledged {result['acknowledged/s']:.1f}/s")
            if len(latencies):
                print(f"  C-STORE sent -> SR stored in Orthanc: p50 {np.percentile(latencies, 50):.3f} s, "
                      f"p99 {np.percentile(latencies, 99):.3f} s")
            print(f"  inside the node, per instance: {result['stages']}")
            wall = 1000 / result["instances/s"] if result["instances/s"] else float("nan")
            print("  CPU per instance: " + ", ".join(f"{name} {s * 1000:.1f} ms" for name, s in result["cpu"].items())
                  + f" (senders: this process, its watcher included); wall {wall:.1f} ms an instance, "
                  f"{os.cpu_count()} cores")
            print(f"  C-STORE failures {result['failures']}, SRs missing in Orthanc {result['missing']}, "
                  f"node's largest resident memory {result['peak MiB']:,.0f} MiB")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    return 0 if not any(r["failures"] or r["missing"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
