"""Prediction at scale: `pneumoscan predict --out` end to end, its memory with the number of inputs, and Ray.

    .venv/bin/python bench/bench_predict_scale.py                  # the docs' figures (several minutes)
    .venv/bin/python bench/bench_predict_scale.py --quick          # a minute: checks that it works
    .venv/bin/python bench/bench_predict_scale.py --model runs/latest/export/model.onnx --no-ray

Without --model it measures the training recipe's default network at its default size with random weights
(speed does not depend on the weights), exported to ONNX as `pneumoscan export` does. Inputs are the
shared training images (../shared/data/chest_xray/train, 5,216 files, or $PNEUMOSCAN_TEST_DATA).

Figures, each from a fresh `python -m pneumoscan predict` process (imports, model load, listing, decoding,
scoring and writing all counted):
- the limits of the parts: decoding alone (the same worker processes, no scoring) and ONNX Runtime alone;
- end to end on the training images: streamed to CSV (`--out all.csv`), and the collect-then-write path
  (`--out all.json`) for comparison;
- peak memory (resident, the process and its workers together) for 5,000 and 50,000 inputs: the shared
  images repeated under other names (symlinks), streamed to CSV;
- Ray (`--engine ray`, a local Ray on this machine) on the training images, and its overhead against the
  single-machine path: starting Ray and its workers, moving pixels through its object store.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from _common import default_architecture, random_run  # noqa: E402

AIM_IMAGES_PER_S = 1200.0  # end to end on 2 CPU cores


def training_folder() -> Path:
    root = Path(os.environ.get("PNEUMOSCAN_TEST_DATA", REPO.parent / "shared" / "data")) / "chest_xray" / "train"
    if not root.is_dir():
        sys.exit(f"bench_predict_scale: {root} not found; set PNEUMOSCAN_TEST_DATA to the folder holding chest_xray/")
    return root


def repeated_inputs(images: list[Path], count: int, folder: Path) -> Path:
    """``count`` inputs: the images repeated under other names (symlinks), 1,000 to a folder."""
    for i in range(count):
        link = folder / f"{i // 1000:03d}" / f"{i:06d}{images[i % len(images)].suffix}"
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(images[i % len(images)])
    return folder


class PeakMemory:
    """Polls the resident memory of a process and all its descendants; keeps the peak of their sum."""

    def __init__(self, pid: int, every_s: float = 0.05) -> None:
        import psutil

        self.root, self.every, self.peak, self.peak_main = psutil.Process(pid), every_s, 0, 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self) -> None:
        import psutil

        while not self.done.is_set():
            try:
                main = self.root.memory_info().rss
                total = main + sum(c.memory_info().rss for c in self.root.children(recursive=True))
            except psutil.Error:
                total = main = 0
            self.peak, self.peak_main = max(self.peak, total), max(self.peak_main, main)
            time.sleep(self.every)

    def stop(self) -> tuple[float, float]:
        self.done.set()
        self.thread.join()
        return self.peak / 2**20, self.peak_main / 2**20


def run_predict(argv: list[str]) -> dict:
    """A fresh `python -m pneumoscan predict ARGV`: wall seconds, peak memory (MiB), its summary line."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "pneumoscan", "predict", *argv], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    memory = PeakMemory(child.pid)
    out, err = child.communicate()
    seconds = time.perf_counter() - start
    peak, peak_main = memory.stop()
    if child.returncode != 0:
        sys.exit(f"bench_predict_scale: predict {' '.join(argv)} failed ({child.returncode}):\n{err[-2000:]}")
    summary = next((line for line in out.splitlines() if line.startswith("scored ")), "")
    return {"seconds": seconds, "peak_mib": peak, "peak_main_mib": peak_main, "summary": summary}


def part_limits(model: Path, folder: Path, workers: int | None) -> dict:
    """Decoding alone (the predict workers, nothing scored), the cache's decoding (read_image only, without
    predict's radiograph checks) and ONNX Runtime alone, in images/s."""
    import numpy as np

    from pneumoscan.data._parallel import default_workers
    from pneumoscan.inference import load
    from pneumoscan.inference.stream import decode_files, iter_sources

    classifier = load(model)
    size, fit = classifier.image_size, classifier.meta.fit
    files = list(iter_sources([folder]))
    start = time.perf_counter()
    pixels = [p for _, p, _, _ in decode_files(files, size, fit, workers or default_workers()) if p is not None]
    decode_rate = len(files) / (time.perf_counter() - start)
    from pneumoscan.data._parallel import parallel_map
    from pneumoscan.data.cache import _decode_one  # what `data cache` runs on every file

    start = time.perf_counter()
    for _ in parallel_map(_decode_one, [(f, size, fit) for f in files], workers=workers):
        pass
    read_rate = len(files) / (time.perf_counter() - start)
    batch = np.stack(pixels[:1024])
    classifier.predict_proba(batch[:64])  # warm-up
    start = time.perf_counter()
    classifier.predict_proba(batch, batch_size=32)
    return {"decode_per_s": decode_rate, "read_image_per_s": read_rate,
            "onnx_per_s": len(batch) / (time.perf_counter() - start), "files": len(files)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="an exported .onnx model (default: random weights, default recipe)")
    parser.add_argument("--counts", default="5000,50000", help="input counts for the memory figures")
    parser.add_argument("--workers", type=int, default=None, help="decoding processes (default: the usable cores)")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray figures")
    parser.add_argument("--quick", action="store_true", help="500 and 2,000 inputs; a check that the bench works")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()
    counts = [500, 2000] if args.quick else [int(c) for c in args.counts.split(",")]
    train = training_folder()
    extra = ["--workers", str(args.workers)] if args.workers else []

    with tempfile.TemporaryDirectory(prefix="bench-predict-scale-") as tmp_name:
        tmp = Path(tmp_name)
        model = args.model
        if model is None:
            from pneumoscan.serving.export import export_onnx

            name, size = default_architecture()
            print(f"exporting a random-weight {name} at {size} px to ONNX ...", flush=True)
            model = export_onnx(random_run(tmp / "run", name, size))
        figures: dict = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
                         "cores_usable": len(os.sched_getaffinity(0)), "model": str(model)}

        limits = part_limits(model, train, args.workers)
        figures["limits"] = limits
        print(f"parts: decoding alone {limits['decode_per_s']:,.0f} images/s (read_image without the radiograph "
              f"checks, as the cache decodes: {limits['read_image_per_s']:,.0f}), ONNX Runtime alone "
              f"{limits['onnx_per_s']:,.0f} images/s ({limits['files']:,} training images)", flush=True)

        streamed = run_predict([str(model), str(train), "--out", str(tmp / "all.csv"), *extra])
        collected = run_predict([str(model), str(train), "--out", str(tmp / "all.json"), *extra])
        for key, run in (("streamed_csv", streamed), ("collected_json", collected)):
            run["images_per_s"] = limits["files"] / run["seconds"]
            figures[key] = run
        print(f"end to end, {limits['files']:,} images: streamed to CSV {streamed['seconds']:.1f} s = "
              f"{streamed['images_per_s']:,.0f} images/s (aim >= {AIM_IMAGES_PER_S:,.0f}); collected to JSON "
              f"{collected['seconds']:.1f} s = {collected['images_per_s']:,.0f} images/s", flush=True)

        images = sorted(p for p in train.rglob("*") if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
        figures["memory"] = {}
        for count in counts:
            folder = repeated_inputs(images, count, tmp / f"inputs-{count}")
            run = run_predict([str(model), str(folder), "--out", str(tmp / f"r{count}.csv"), *extra])
            run["images_per_s"] = count / run["seconds"]
            figures["memory"][count] = run
            print(f"{count:>7,} inputs: peak memory {run['peak_mib']:,.0f} MiB with its workers "
                  f"({run['peak_main_mib']:,.0f} MiB the main process), {run['seconds']:.1f} s, "
                  f"{run['images_per_s']:,.0f} images/s", flush=True)

        if not args.no_ray:
            ray = run_predict([str(model), str(train), "--engine", "ray", "--out", str(tmp / "ray.parquet")])
            ray["images_per_s"] = limits["files"] / ray["seconds"]
            ray["overhead_s"] = ray["seconds"] - streamed["seconds"]
            figures["ray_local"] = ray
            print(f"Ray on this machine, {limits['files']:,} images: {ray['seconds']:.1f} s = "
                  f"{ray['images_per_s']:,.0f} images/s; overhead against the single-machine path "
                  f"{ray['overhead_s']:+.1f} s; peak memory {ray['peak_mib']:,.0f} MiB", flush=True)

    print(json.dumps(figures, default=str))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
