"""Inference speed: PyTorch eager against ONNX Runtime, in one run, and a cold `pneumoscan predict`.

    .venv/bin/python bench/bench_inference.py                 # the figures of docs/benchmarks.md
    .venv/bin/python bench/bench_inference.py --quick         # a few seconds: checks that it works
    .venv/bin/python bench/bench_inference.py --model densenet121 --image-size 224
    .venv/bin/python bench/bench_inference.py --run runs/latest   # a trained model instead of random weights

Without --run it measures the training recipe's default network at its default size with random weights
(speed does not depend on the weights), exported to ONNX exactly as `pneumoscan export` does. Inputs are
real radiographs from ../shared/data, decoded once (random pixels when the data is absent).

Figures: single-image latency p50/p99 (one image per call, model only), and batched throughput
(images/s at --batch-size), for both backends with the same number of threads; then the wall time of a
fresh `python -m pneumoscan predict model.onnx image.jpeg` process (cold: imports, model load, decode,
score, print); the int8 graph against the float one: bench/bench_int8.py. Aims on 2 CPU cores: ONNX Runtime p50 <= 10 ms and >= 300 images/s batched;
cold predict <= 2 s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import numpy as np  # noqa: E402

from _common import default_architecture, random_run  # noqa: E402

AIM_P50_MS, AIM_IMAGES_PER_S, AIM_COLD_S = 10.0, 300.0, 2.0


def real_images(count: int) -> list[Path]:
    root = Path(os.environ.get("PNEUMOSCAN_TEST_DATA", REPO.parent / "shared" / "data")) / "chest_xray" / "train"
    files = sorted(root.glob("*/*.jpeg"))
    return files[:: max(1, len(files) // count)][:count] if files else []


def time_calls(call, repeats: int, warmup: int) -> np.ndarray:
    for _ in range(warmup):
        call()
    times = np.empty(repeats)
    for i in range(repeats):
        start = time.perf_counter()
        call()
        times[i] = time.perf_counter() - start
    return times


def measure(backend, images: np.ndarray, single: int, batch_size: int, batches: int, warmup: int) -> dict:
    one = images[:1]
    latency = time_calls(lambda: backend.logits(one), single, warmup) * 1e3
    batch = np.ascontiguousarray(np.resize(images, (batch_size, *images.shape[1:])))
    batch_times = time_calls(lambda: backend.logits(batch), batches, 1)
    return {
        "p50_ms": float(np.percentile(latency, 50)), "p99_ms": float(np.percentile(latency, 99)),
        "images_per_s": float(batch_size * batches / batch_times.sum()),
    }


def cold_predict(onnx_file: Path, image: Path, repeats: int) -> list[float]:
    """Wall times of fresh ``python -m pneumoscan predict`` processes, as a user runs it."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "pneumoscan", "predict", str(onnx_file), str(image)],
                       check=True, capture_output=True, env=env, timeout=120)
        times.append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> int:
    name, size = default_architecture()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=name, help="registry name (ignored with --run)")
    parser.add_argument("--image-size", type=int, default=size, help="input size (ignored with --run)")
    parser.add_argument("--run", type=Path, help="a trained run folder (its export/model.onnx is made if missing)")
    parser.add_argument("--threads", type=int, default=2, help="threads for both backends")
    parser.add_argument("--single", type=int, default=300, help="single-image calls timed per backend")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=20, help="batches timed per backend")
    parser.add_argument("--cold", type=int, default=5, help="cold `pneumoscan predict` processes timed")
    parser.add_argument("--quick", action="store_true", help="tiny settings, to check the script works")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.single, args.batches, args.cold, args.batch_size = 20, 2, 1, 16

    import torch

    from pneumoscan.inference.onnx_backend import OnnxBackend, load_onnx
    from pneumoscan.inference.torch_backend import TorchBackend
    from pneumoscan.models import load_model
    from pneumoscan.serving.export import export_onnx

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run or random_run(Path(tmp) / "run", args.model, args.image_size)
        onnx_file = run / "export" / "model.onnx"
        if not onnx_file.is_file():
            start = time.perf_counter()
            export_onnx(run, onnx_file)
            print(f"exported {onnx_file} in {time.perf_counter() - start:.1f} s")
        model, meta = load_model(run)
        classifier = load_onnx(onnx_file, device="cpu", threads=args.threads)
        files = real_images(64)
        if files:
            images = np.stack([classifier.preprocess(f) for f in files])
        else:
            images = np.random.default_rng(0).random((64, 1, meta.image_size, meta.image_size), dtype=np.float32)
        results = {
            "pytorch": measure(TorchBackend(model, "cpu"), images, args.single, args.batch_size, args.batches, 10),
            "onnxruntime": measure(OnnxBackend(onnx_file, threads=args.threads, device="cpu"), images,
                                   args.single, args.batch_size, args.batches, 10),
        }
        cold = cold_predict(onnx_file, files[0], args.cold) if files and args.cold else []

    import onnxruntime

    conditions = {
        "model": meta.name, "image_size": meta.image_size, "weights": "trained" if args.run else "random",
        "threads": args.threads, "batch_size": args.batch_size, "cpus": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0], "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
        "inputs": "real radiographs" if files else "random pixels",
    }
    print(f"\n{meta.name} at {meta.image_size}px, {args.threads} threads, batch {args.batch_size}, "
          f"{conditions['inputs']}, load average {conditions['load_average_1min']:.1f} on {os.cpu_count()} CPUs")
    print(f"{'backend':<12} {'p50 ms':>8} {'p99 ms':>8} {'images/s':>10}")
    for backend, r in results.items():
        print(f"{backend:<12} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['images_per_s']:>10.0f}")
    if cold:
        print(f"cold `pneumoscan predict` (ONNX, one image): median {statistics.median(cold):.2f} s, "
              f"max {max(cold):.2f} s over {len(cold)} runs")
    ort = results["onnxruntime"]
    checks = {
        f"ONNX Runtime p50 <= {AIM_P50_MS:g} ms": ort["p50_ms"] <= AIM_P50_MS,
        f"ONNX Runtime >= {AIM_IMAGES_PER_S:g} images/s batched": ort["images_per_s"] >= AIM_IMAGES_PER_S,
    }
    if cold:
        checks[f"cold predict <= {AIM_COLD_S:g} s (median)"] = statistics.median(cold) <= AIM_COLD_S
    for aim, met in checks.items():
        print(f"  {'met    ' if met else 'NOT met'}  {aim}")
    if args.json:
        args.json.write_text(json.dumps({"conditions": conditions, "results": results, "cold_predict_s": cold,
                                         "aims": checks}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
