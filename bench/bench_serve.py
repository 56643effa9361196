"""Load test of `pneumoscan serve` on 127.0.0.1: concurrent clients send real radiographs to /v1/predict.

    .venv/bin/python bench/bench_serve.py                    # the figures of docs/benchmarks.md: 30 s, 8 clients
    .venv/bin/python bench/bench_serve.py --seconds 5        # a quick check
    .venv/bin/python bench/bench_serve.py --model runs/latest --workers 2
    .venv/bin/python bench/bench_serve.py --model src/pneumoscan/bundled/model.onnx --originals --clients 4
                                                             # full-size originals (about 2,000 px JPEGs)
    .venv/bin/python bench/bench_serve.py --model src/pneumoscan/bundled/model.onnx --explain --seconds 120
                                                             # a 2-minute flood of Grad-CAM requests: memory

The server runs as its own process, started exactly as a user starts it (`python -m pneumoscan serve`).
Without --model it serves the ONNX export of the default training architecture at its default size,
with random weights (latency does not depend on the weights). Each client is a thread with its own
keep-alive connection that sends the next of 64 real 224 px JPEGs from ../shared/data (with --originals,
the full-size originals of chest_xray_originals) as soon as the previous answer arrives. Latency is the
client's full round trip. It also prints the server's batches during the measurement (network calls and
images per call, from /readyz; with --workers above 1, one worker's). Aim, on 2 CPU cores, zero errors:
at least 500 requests/s with p99 at most 50 ms (224 px, 8 clients); at least 250 requests/s with
--originals (4 clients). Clients and server share the machine's cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import httpx  # noqa: E402
import numpy as np  # noqa: E402

from _common import default_architecture, random_run, resident_mib  # noqa: E402

AIM_RPS, AIM_P99_MS = 500.0, 50.0
AIM_ORIGINALS_RPS = 250.0


def real_images(root: Path, count: int, originals: bool = False) -> list[tuple[str, bytes]]:
    """``count`` real radiographs, half NORMAL and half PNEUMONIA, spread over the training folder (or the
    full-size originals)."""
    images: list[tuple[str, bytes]] = []
    folder = root / "chest_xray_originals" if originals else root / "chest_xray" / "train"
    for cls in ("NORMAL", "PNEUMONIA"):
        files = sorted((folder / cls).glob("*.jpeg"))
        if not files:
            sys.exit(f"bench_serve: no images in {folder / cls}; pass --data")
        step = max(1, len(files) // (count // 2))
        images += [(f.name, f.read_bytes()) for f in files[::step][: count // 2]]
    return images


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(model: Path, port: int, args: argparse.Namespace, log: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "pneumoscan", "serve", str(model), "--port", str(port),
               "--workers", str(args.workers), "--max-concurrency", str(args.max_concurrency),
               "--log-level", "warning"]
    for option in ("batch_images", "batch_wait_ms"):
        if getattr(args, option) is not None:
            command += [f"--{option.replace('_', '-')}", str(getattr(args, option))]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT)
    with httpx.Client(timeout=5) as client:
        while time.perf_counter() - started < 180:
            if process.poll() is not None:
                sys.exit(f"bench_serve: the server exited:\n{log.read_text()}")
            try:
                if client.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                    print(f"server ready in {time.perf_counter() - started:.1f} s (process start to /readyz 200)")
                    return process
            except httpx.TransportError:
                pass
            time.sleep(0.1)
    process.terminate()
    sys.exit(f"bench_serve: the server was not ready after 180 s:\n{log.read_text()}")


def load(url: str, images: list[tuple[str, bytes]], clients: int, seconds: float, path: str = "/v1/predict") -> dict:
    """``clients`` threads send images back to back for ``seconds``; latencies of successful requests."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: Counter[str] = Counter()
    lock = threading.Lock()
    start_line = threading.Barrier(clients + 1)
    deadline = [0.0]

    def client(index: int) -> None:
        with httpx.Client(base_url=url, timeout=30) as http:
            i = index
            start_line.wait()
            while time.perf_counter() < deadline[0]:
                name, data = images[i % len(images)]
                i += clients
                sent = time.perf_counter()
                try:
                    response = http.post(path, files={"file": (name, data, "image/jpeg")})
                    code = response.status_code
                except httpx.HTTPError as exc:
                    code = type(exc).__name__
                if code == 200:
                    latencies[index].append(time.perf_counter() - sent)
                else:
                    with lock:
                        errors[str(code)] += 1

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    deadline[0] = time.perf_counter() + seconds
    began = time.perf_counter()
    start_line.wait()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    all_ms = np.array([t for per in latencies for t in per]) * 1000.0
    ok = int(all_ms.size)
    return {
        "requests_ok": ok, "errors": int(sum(errors.values())), "errors_by_kind": dict(errors),
        "seconds": round(elapsed, 2), "requests_per_s": round(ok / elapsed, 1),
        "p50_ms": round(float(np.percentile(all_ms, 50)), 1) if ok else None,
        "p90_ms": round(float(np.percentile(all_ms, 90)), 1) if ok else None,
        "p99_ms": round(float(np.percentile(all_ms, 99)), 1) if ok else None,
        "max_ms": round(float(all_ms.max()), 1) if ok else None,
    }


def batch_counts(url: str) -> tuple[int, int]:
    """The server's network calls and the images they scored so far (its /readyz)."""
    stats = httpx.get(f"{url}/readyz", timeout=10).json()["batching"]
    return stats["network_calls"], stats["images"]


def main() -> None:
    shared = Path(os.environ.get("PNEUMOSCAN_TEST_DATA") or REPO.parent / "shared" / "data")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="model.onnx or run folder (default: a random-weight export "
                                                   "of the default architecture)")
    parser.add_argument("--arch", help="architecture for the random model (default: the training default)")
    parser.add_argument("--image-size", type=int, help="image size for the random model (default: the training default)")
    parser.add_argument("--data", type=Path, default=shared, help="folder holding chest_xray/train (and "
                                                                  "chest_xray_originals)")
    parser.add_argument("--originals", action="store_true", help="send the full-size originals "
                        "(chest_xray_originals) instead of the 224 px copies")
    parser.add_argument("--images", type=int, default=64, help="distinct real images the clients cycle through")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before measuring")
    parser.add_argument("--workers", type=int, default=1, help="server worker processes")
    parser.add_argument("--max-concurrency", type=int, default=2, help="server batches scored at once per worker")
    parser.add_argument("--batch-images", type=int, help="server's most images per network call (default: its own)")
    parser.add_argument("--batch-wait-ms", type=float, help="server's longest wait for a batch (default: its own)")
    parser.add_argument("--explain", action="store_true", help="ask for the Grad-CAM overlay with every answer "
                        "(?explain=true), and print the server's resident memory after warm-up and at the end")
    parser.add_argument("--out", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args()
    path = "/v1/predict?explain=true" if args.explain else "/v1/predict"

    images = real_images(args.data, args.images, args.originals)
    with tempfile.TemporaryDirectory(prefix="pneumoscan-bench-serve-") as tmp:
        model = args.model
        if model is None:
            arch, size = default_architecture()
            arch, size = args.arch or arch, args.image_size or size
            print(f"exporting a random-weight {arch} at {size} px to ONNX ...")
            from pneumoscan.serving.export import export_onnx

            model = random_run(Path(tmp) / "run", arch, size)
            export_onnx(model)
        port = free_port()
        server = start_server(model, port, args, Path(tmp) / "server.log")
        url = f"http://127.0.0.1:{port}"
        try:
            with httpx.Client(base_url=url, timeout=10) as http:
                serving = http.get("/v1/model").json()["serving"]
            if args.warmup > 0:
                load(url, images, args.clients, args.warmup, path)
            memory = [resident_mib(server.pid)]
            batching = [batch_counts(url)]
            figures = load(url, images, args.clients, args.seconds, path)
            memory.append(resident_mib(server.pid))
            batching.append(batch_counts(url))
        finally:
            server.terminate()
            server.wait(timeout=30)

    conditions = {
        "model": serving["model"], "backend": serving["backend"], "file": serving["file"],
        "workers": args.workers, "max_concurrency": args.max_concurrency, "clients": args.clients,
        "images": len(images), "originals": args.originals, "explain": args.explain, "cpu_cores": os.cpu_count(), "machine": platform.processor() or platform.machine(),
        "python": platform.python_version(),
    }
    print(f"conditions: {json.dumps(conditions)}")
    print(f"{figures['requests_ok']} requests in {figures['seconds']} s: {figures['requests_per_s']} requests/s; "
          f"latency p50 {figures['p50_ms']} ms, p90 {figures['p90_ms']} ms, p99 {figures['p99_ms']} ms, "
          f"max {figures['max_ms']} ms; errors {figures['errors']} {figures['errors_by_kind'] or ''}")
    calls, scored = (after - before for before, after in zip(batching[0], batching[1], strict=True))
    figures["batching"] = {"network_calls": calls, "images": scored, "mean_batch": round(scored / calls, 2) if calls else None}
    print(f"server batches: {scored} images in {calls} network calls, "
          f"{scored / calls if calls else float('nan'):.2f} images per call on average")
    figures["server_rss_mib"] = {"after_warmup": round(memory[0], 1), "at_end": round(memory[1], 1)}
    print(f"server resident memory: {memory[0]:,.0f} MiB after the warm-up, {memory[1]:,.0f} MiB at the end")
    if args.originals:
        met = figures["requests_per_s"] >= AIM_ORIGINALS_RPS and figures["errors"] == 0
        aim = f">= {AIM_ORIGINALS_RPS:g} requests/s with originals, 0 errors"
    else:
        met = (figures["requests_per_s"] >= AIM_RPS and figures["p99_ms"] is not None
               and figures["p99_ms"] <= AIM_P99_MS and figures["errors"] == 0)
        aim = f">= {AIM_RPS:g} requests/s, p99 <= {AIM_P99_MS:g} ms, 0 errors"
    print(f"aim ({aim}): {'met' if met else 'NOT met'}")
    if args.out:
        from pneumoscan._io import atomic_write_json

        atomic_write_json(args.out, {"conditions": conditions, "figures": figures, "aim_met": met})


if __name__ == "__main__":
    main()
