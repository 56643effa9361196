"""The int8 graph against the float one: speed, and whether they give the same answers.

    .venv/bin/python bench/bench_int8.py                        # the bundled model, quantised here
    .venv/bin/python bench/bench_int8.py --quick                # a few seconds of timing: checks that it works
    .venv/bin/python bench/bench_int8.py --model runs/latest/export/model.onnx   # a run's export (its split.csv)

Quantises the float ONNX model as `pneumoscan export MODEL --int8` does (into a temporary folder; for the
bundled model, calibrated and re-fitted on --data, split by patient as its training was; a run's export
on its own split.csv), then, with the same number of threads for both graphs (model only, inputs decoded
once): single-image latency p50, batched throughput (images/s), and on every image of --data's test/
folder the share given the same answer (the same label, or both refused by the scope gate), the images
refused by one gate only, and the largest difference in probability.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import numpy as np  # noqa: E402

from bench_inference import measure  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="a float ONNX model (default: the bundled model.onnx)")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "chest_xray",
                        help="Kermany root: train/ calibrates (with validation carved by patient, when the model "
                             "has no split.csv), test/ is compared")
    parser.add_argument("--images", type=int, default=300, help="calibration images")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads for both graphs")
    parser.add_argument("--single", type=int, default=200, help="single-image calls timed per graph")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=20, help="batches timed per graph")
    parser.add_argument("--quick", action="store_true", help="tiny timing settings, to check the script works")
    args = parser.parse_args(argv)
    if args.quick:
        args.single, args.batches, args.batch_size = 20, 2, 16

    from pneumoscan import runs
    from pneumoscan.bundled import BUNDLED_DIR, ONNX_FILE
    from pneumoscan.inference import load
    from pneumoscan.inference.onnx_backend import OnnxBackend
    from pneumoscan.serving.quantize import export_int8
    from pneumoscan.training.metrics import refit_on_validation

    float_file = args.model or BUNDLED_DIR / ONNX_FILE
    test = sorted((args.data / "test").glob("*/*.jpeg"))
    if not test:
        print(f"bench_int8: no test images under {args.data / 'test'}; pass --data", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        data = None if runs.find_run(float_file) and runs.split_file(runs.find_run(float_file)) else args.data
        made = export_int8(float_file, refit_on_validation, data, Path(tmp) / runs.int8_file(ONNX_FILE).name,
                           images=args.images)
        print(f"quantised in {time.perf_counter() - started:.0f} s: {made.calibration_images} calibration images; "
              f"temperature {made.meta.temperature:.3f}, threshold {made.meta.threshold:.4f} re-fitted on "
              f"{made.validation_images} validation images")
        float_model = load(float_file, threads=args.threads)
        int8_model = load(made.path, threads=args.threads)
        images = np.stack([float_model.preprocess(f) for f in test[:: max(1, len(test) // 64)][:64]])
        speed = {name: measure(OnnxBackend(path, threads=args.threads, device="cpu"), images, args.single,
                               args.batch_size, args.batches, 10)
                 for name, path in (("float", float_file), ("int8", made.path))}
        rows = float_model.predict(test), int8_model.predict(test)
    same = [(a.error is None) == (b.error is None) and a.label == b.label for a, b in zip(*rows, strict=True)]
    one_gate = sum((a.error is None) != (b.error is None) for a, b in zip(*rows, strict=True))
    gaps = [abs(a.probability - b.probability) for a, b in zip(*rows, strict=True)
            if a.probability is not None and b.probability is not None]
    print(f"\n{float_model.meta.name} at {float_model.meta.image_size}px, {args.threads} threads, batch "
          f"{args.batch_size}, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'graph':<8} {'p50 ms':>8} {'images/s':>10}")
    for name, figures in speed.items():
        print(f"{name:<8} {figures['p50_ms']:>8.2f} {figures['images_per_s']:>10.0f}")
    print(f"{args.data / 'test'}: the same answer for {sum(same)} of {len(same)} images ({np.mean(same):.2%}); "
          f"refused by one gate only: {one_gate}; largest probability difference {max(gaps):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
