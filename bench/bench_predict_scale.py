"""Prediction at scale: `pneumoscan predict --out` end to end, its memory with the number of inputs, and Ray.

    .venv/bin/python bench/bench_predict_scale.py                  # the docs' figures (several minutes)
    .venv/bin/python bench/bench_predict_scale.py --quick          # a minute: checks that it works
    .venv/bin/python bench/bench_predict_scale.py --model runs/latest/export/model.onnx --no-ray
    .venv/bin/python bench/bench_predict_scale.py --rates          # the pipeline's rates (under 3 minutes)
    .venv/bin/python bench/bench_predict_scale.py --rates --model src/pneumoscan/bundled/fast/model.onnx

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

`--rates` measures only the rates of predict's parts and of predict itself on the training images, for a
light network (a random-weight mini-resnet at the bundled model's size and fit, exported to ONNX: the
pipeline's own limit) and for the bundled model (whose network bounds its rate on 2 cores): decoding
alone on 1 and on 2 processes (the workers predict uses, checks included, nothing scored), the network
alone (ONNX Runtime through Classifier.assess, batches of 32 as predict scores them), and end to end
(fresh `python -m pneumoscan predict` processes) streamed to CSV and printing the table. Each figure is
images/s of wall time, and images per CPU-second (the process and its workers together: the figure to
compare on a machine that is busy with something else).
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


def run_predict(argv: list[str], memory: bool = True) -> dict:
    """A fresh `python -m pneumoscan predict ARGV`: wall seconds, peak memory (MiB; 0 without ``memory``,
    whose polling takes CPU time from the run), its summary line."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "pneumoscan", "predict", *argv], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    poller = PeakMemory(child.pid) if memory else None
    out, err = child.communicate()
    seconds = time.perf_counter() - start
    peak, peak_main = poller.stop() if poller else (0.0, 0.0)
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
    from pneumoscan.inference.decoding import decode_files
    from pneumoscan.inference.stream import iter_sources

    classifier = load(model)
    size, fit = classifier.image_size, classifier.meta.fit
    files = list(iter_sources([folder]))
    start = time.perf_counter()
    pixels = [d.pixels for d in decode_files(files, size, fit, workers or default_workers()) if d.pixels is not None]
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


def cpu_seconds() -> float:
    """CPU time of this process and of its waited-for children (and theirs), user and system."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(call, *args, **kwargs) -> tuple[float, float, object]:
    """(wall seconds, CPU seconds, result) of ``call(*args, **kwargs)``, worker processes included once
    they have exited."""
    start, cpu = time.perf_counter(), cpu_seconds()
    result = call(*args, **kwargs)
    return time.perf_counter() - start, cpu_seconds() - cpu, result


def decoded_pixels(files: list[str], size: int, fit: str, workers: int) -> list:
    from pneumoscan.inference.decoding import decode_files

    return [d.pixels for d in decode_files(files, size, fit, workers) if d.pixels is not None]


def rate(count: int, wall: float, cpu: float) -> dict:
    return {"images_per_s": count / wall, "images_per_cpu_s": count / cpu if cpu > 0 else None,
            "seconds": wall, "cpu_seconds": cpu}


def pipeline_rates(models: dict[str, Path | None], folder: Path, batch_size: int = 32) -> dict:
    """The rates of `--rates` for each of ``models`` (None: the bundled model)."""
    import numpy as np

    from pneumoscan.inference import load
    from pneumoscan.inference.stream import iter_sources

    files = list(iter_sources([folder]))
    figures: dict = {"files": len(files), "models": {}}
    decoded: dict[tuple[int, str], dict] = {}
    for label, model in models.items():
        classifier = load(model)
        size, fit = classifier.image_size, classifier.meta.fit
        entry: dict = {"model": f"{classifier.meta.name} at {size} px ({fit})"}
        if (size, fit) not in decoded:  # the same decoding for every model of this size and fit
            limits: dict = {}
            for workers in (1, 2):
                wall, cpu, pixels = timed(decoded_pixels, files, size, fit, workers)
                limits[f"decode_{workers}"] = rate(len(files), wall, cpu)
            limits["batch"] = np.stack(pixels[:1024])
            decoded[(size, fit)] = limits
        limits = decoded[(size, fit)]
        entry.update({key: value for key, value in limits.items() if key != "batch"})
        batch = limits["batch"]
        names = [f"<image {i}>" for i in range(len(batch))]
        classifier.assess(batch[:batch_size], names[:batch_size], batch_size=batch_size)  # warm-up
        entry["network"] = rate(len(batch), *timed(classifier.assess, batch, names, batch_size=batch_size)[:2])
        given = [str(model)] if model is not None else []
        with tempfile.TemporaryDirectory(prefix="bench-rates-") as tmp:
            out = Path(tmp) / "scores.csv"
            for key, argv in (("streamed", [*given, str(folder), "--out", str(out), "--quiet"]),
                              ("table", [*given, str(folder), "--no-progress"])):
                start, cpu = time.perf_counter(), cpu_seconds()
                run_predict(argv, memory=False)
                entry[key] = rate(len(files), time.perf_counter() - start, cpu_seconds() - cpu)
        figures["models"][label] = entry
    return figures


def print_rates(figures: dict) -> None:
    rows = [("decode_1", "decoding alone, 1 process"), ("decode_2", "decoding alone, 2 processes"),
            ("network", "network alone (ONNX Runtime, batch 32)"), ("streamed", "end to end, streamed (--out .csv)"),
            ("table", "end to end, the table printed")]
    models = figures["models"]
    print(f"\nimages/s on the {figures['files']:,} training images (in brackets: images per CPU-second, the "
          "process and its workers)")
    print(f"{'':40}" + "".join(f"{label:>40}" for label in models))
    print(f"{'':40}" + "".join(f"{entry['model']:>40}" for entry in models.values()))
    for key, title in rows:
        cells = []
        for entry in models.values():
            r = entry[key]
            per_cpu = f"({r['images_per_cpu_s']:,.0f})" if r["images_per_cpu_s"] else "(-)"
            cells.append(f"{r['images_per_s']:>30,.0f} {per_cpu:>9}")
        print(f"{title:40}" + "".join(cells))
    light = next(iter(models.values()))
    worst = min(light["streamed"]["images_per_s"], light["table"]["images_per_s"])
    print(f"aim: end to end >= {AIM_IMAGES_PER_S:,.0f} images/s with the light network, both paths: "
          f"{'met' if worst >= AIM_IMAGES_PER_S else 'NOT met'} ({worst:,.0f}); with the bundled model the network "
          "alone bounds the rate", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="an exported .onnx model (default: random weights, default recipe)")
    parser.add_argument("--counts", default="5000,50000", help="input counts for the memory figures")
    parser.add_argument("--workers", type=int, default=None, help="decoding processes (default: the usable cores)")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray figures")
    parser.add_argument("--quick", action="store_true", help="500 and 2,000 inputs; a check that the bench works")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--rates", action="store_true",
                        help="only the rates of predict and its parts, for a light network and the bundled model")
    args = parser.parse_args()
    counts = [500, 2000] if args.quick else [int(c) for c in args.counts.split(",")]
    train = training_folder()
    extra = ["--workers", str(args.workers)] if args.workers else []
    if args.rates:
        return rates_only(args, train)

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


def rates_only(args, train: Path) -> None:
    from pneumoscan.inference import load
    from pneumoscan.serving.export import export_onnx

    bundled = load()
    with tempfile.TemporaryDirectory(prefix="bench-predict-rates-") as tmp_name:
        size, fit = bundled.image_size, bundled.meta.fit
        light = args.model
        if light is None:
            print(f"exporting a random-weight mini-resnet at {size} px ({fit}), the light network, to ONNX ...",
                  flush=True)
            light = export_onnx(random_run(Path(tmp_name) / "light", "mini-resnet", size, fit))
        figures = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
                   "cores_usable": len(os.sched_getaffinity(0)), "load_average_1min": os.getloadavg()[0],
                   **pipeline_rates({"light network" if args.model is None else str(args.model): light,
                                     "bundled model": None}, train)}
        figures["load_average_1min_after"] = os.getloadavg()[0]
    print_rates(figures)
    print(f"{figures['machine']}, {figures['cores_usable']} usable; load average {figures['load_average_1min']:.1f} "
          f"before, {figures['load_average_1min_after']:.1f} after")
    print(json.dumps(figures, default=str))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
