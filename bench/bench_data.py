"""Data-stage figures: cache build, decoding of full-resolution originals, inspect and validate.

    .venv/bin/python bench/bench_data.py                     # the figures of docs/benchmarks.md (about 15 s)
    .venv/bin/python bench/bench_data.py --limit 300         # a quick check on a few files

Targets: the cache of ../shared/data/chest_xray (5,232 images at 224 px) in at most 10 s on
2 cores; the 150 originals in ../shared/data/chest_xray_originals decoded and resized at >= 40 images/s.
Every build writes into a fresh temporary cache folder, so each run measures a cold build.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from pneumoscan.data import build_cache, load_dataset, read_image  # noqa: E402
from pneumoscan.data._parallel import default_workers, parallel_map  # noqa: E402
from pneumoscan.data.inspect import inspect_dataset  # noqa: E402
from pneumoscan.data.validate import validate_dataset  # noqa: E402


def _cpu() -> float:
    """CPU seconds of this process and its finished workers: less sensitive to a busy machine than wall time."""
    own, workers = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + workers.ru_utime + workers.ru_stime


def _resize_one(job: tuple[str, int]) -> int:
    path, size = job
    return int(read_image(path, size, "pad").shape[0])


def main() -> None:
    shared = REPO.parent / "shared" / "data"
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=shared / "chest_xray", help="dataset for the cache")
    parser.add_argument("--originals", type=Path, default=shared / "chest_xray_originals")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--workers", type=int, default=None, help="processes (default: the usable cores)")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N images of --data")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per figure; the best is printed")
    args = parser.parse_args()
    workers = args.workers or default_workers()
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible, "
          f"{default_workers()} usable, workers={workers}, python {platform.python_version()}")

    print(f"# load average {' '.join(f'{x:.1f}' for x in os.getloadavg())} (wall times are only comparable "
          "on a quiet machine; cpu = CPU seconds of all processes)")
    samples = load_dataset(args.data).samples[: args.limit]
    best = cpu = float("inf")
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as folder:
            start, cpu_start = time.perf_counter(), _cpu()
            cache = build_cache(samples, args.size, "pad", folder, workers=workers, progress=False)
            best, cpu = min(best, time.perf_counter() - start), min(cpu, _cpu() - cpu_start)
            start = time.perf_counter()
            reused = build_cache(samples, args.size, "pad", folder, workers=workers, progress=False)
            reuse = time.perf_counter() - start
            assert reused.reused and len(cache.samples) == len(samples) - len(cache.failures)
    print(f"cache build  {len(samples):>5} images at {args.size}px: {best:6.2f} s, cpu {cpu:.2f} s "
          f"({len(samples) / best:,.0f} img/s; target <= 10 s for 5,232); reuse {reuse:.2f} s")

    originals = sorted(str(p) for p in args.originals.glob("*/*") if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
    if originals:
        for n in (1, workers):
            best = cpu = float("inf")
            for _ in range(args.repeat):
                start, cpu_start = time.perf_counter(), _cpu()
                list(parallel_map(_resize_one, [(p, args.size) for p in originals], n))
                best, cpu = min(best, time.perf_counter() - start), min(cpu, _cpu() - cpu_start)
            print(f"originals    {len(originals):>5} full-res decode+resize to {args.size}px, {n} process(es): "
                  f"{best:6.2f} s, cpu {cpu:.2f} s ({len(originals) / best:,.0f} img/s; target >= 40 img/s)")
    else:
        print(f"originals: none found under {args.originals}")

    with tempfile.TemporaryDirectory() as out:
        start, cpu_start = time.perf_counter(), _cpu()
        inspect_dataset(args.data, out, workers=workers)
        print(f"inspect      {args.data}: {time.perf_counter() - start:6.2f} s, cpu {_cpu() - cpu_start:.2f} s "
              "(hashes, leakage check, plots)")
    start, cpu_start = time.perf_counter(), _cpu()
    report = validate_dataset(args.data, workers=workers)
    print(f"validate     {report.checked:>5} files fully decoded: {time.perf_counter() - start:6.2f} s, "
          f"cpu {_cpu() - cpu_start:.2f} s")


if __name__ == "__main__":
    main()
