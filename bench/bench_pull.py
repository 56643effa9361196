"""`dicom pull` against DICOMweb servers that lie: how long until it stops, and at what peak memory.

    PYTHONPATH=src python bench/bench_pull.py [--deadline 30] [--read-timeout 10]

Each hostile server of tests/helpers/dicomweb_server.py (an endless JSON answer, a multipart part without
its closing boundary, endless result pages, one byte per second) runs on 127.0.0.1; each pull runs in its
own process with a tiny random model, its address space capped at what it holds after loading the model
plus 1 GiB (tests/helpers/hostile_pull.py). Printed per server: seconds until the pull stopped, the
pull's peak resident memory (and before the pull, the model loaded), the HTTP searches the server answered, and the one-line reason.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from _common import random_run  # noqa: E402
from helpers.dicomweb_server import HOSTILE, DicomWebServer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deadline", type=float, default=30.0, help="the pull's deadline (s)")
    parser.add_argument("--read-timeout", type=float, default=10.0, help="seconds one read may wait")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    with tempfile.TemporaryDirectory() as folder:
        model = random_run(Path(folder) / "run", "seed-cnn", 64)
        print(f"deadline {args.deadline:g} s, read timeout {args.read_timeout:g} s, cap: the loaded process + 1 GiB")
        print(f"{'server':<14} {'stopped after':>13} {'peak RSS (before)':>17} {'searches':>8}  reason")
        for hostile in HOSTILE:
            with DicomWebServer(hostile=hostile, interval=1.0) as server:
                command = [sys.executable, str(ROOT / "tests" / "helpers" / "hostile_pull.py"), str(model),
                           server.url, str(Path(folder) / hostile), "--deadline", str(args.deadline),
                           "--read-timeout", str(args.read_timeout)]
                if hostile == "endless-pages":
                    command += ["--since", "2026-01-01"]
                start = time.monotonic()
                done = subprocess.run(command, env=env, capture_output=True, text=True,
                                      timeout=args.deadline + args.read_timeout + 120)
                wall = time.monotonic() - start
            if done.returncode != 0:
                print(f"{hostile:<14} failed after {wall:.1f} s: {done.stderr.strip()[-500:]}")
                continue
            figures = json.loads(done.stdout.strip().splitlines()[-1])
            why = (figures["error"] or "finished").replace(server.url, "URL")
            print(f"{hostile:<14} {figures['seconds']:>11.2f} s {figures['peak_rss_mib']:>5.0f} MiB "
                  f"({figures['rss_before_mib']:>3.0f} MiB) {server.searches:>8}  {why}")


if __name__ == "__main__":
    main()
