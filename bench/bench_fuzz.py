"""Fuzz the image decoder and the upload endpoint for a fixed time and print what happened.

    .venv/bin/python bench/bench_fuzz.py --seconds 60            # decoder + server, 60 s each
    .venv/bin/python bench/bench_fuzz.py --seconds 5 --no-server  # a quick check

Inputs are small valid files of every supported format (tests/helpers/corpus.py: fuzz_seeds) with
random edits (bit flips, extreme bytes, cuts, insertions, truncation), and plain random bytes. The
decoder may only decode or raise ImageReadError; the server may only answer 200, 413, 415 or 422.
Anything else is printed with the input saved under bench/out/fuzz/ to reproduce it. Exit code 1 if any.
The pytest suite runs the same properties with hypothesis for a few seconds (tests/robustness/test_robust_fuzz.py).
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import random
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from helpers.corpus import fuzz_seeds, mutate, tiny_model  # noqa: E402
from pneumoscan.data import probe_image, read_image  # noqa: E402
from pneumoscan.errors import ImageReadError  # noqa: E402

OUT = ROOT / "bench" / "out" / "fuzz"


def inputs(rng: random.Random, seeds: dict[str, bytes]):
    names = sorted(seeds)
    while True:
        if rng.random() < 0.1:
            yield "random", rng.randbytes(rng.randint(0, 2048))
        else:
            name = rng.choice(names)
            yield name, mutate(seeds[name], rng)


def save_crash(kind: str, data: bytes, what: str) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{kind}-{hashlib.sha256(data).hexdigest()[:12]}.bin"
    path.write_bytes(data)
    print(f"  UNHANDLED ({kind}): {what}  -> {path}")
    return path


def fuzz_decoder(seconds: float, rng: random.Random, seeds: dict[str, bytes]) -> collections.Counter:
    outcomes: collections.Counter = collections.Counter()
    deadline = time.perf_counter() + seconds
    for seed, data in inputs(rng, seeds):
        if time.perf_counter() > deadline:
            break
        for label, call in (("read_image(32)", lambda d: read_image(d, 32, name="fuzz")),
                            ("read_image", lambda d: read_image(d, name="fuzz")),
                            ("probe_image", lambda d: probe_image(d, name="fuzz"))):
            try:
                call(data)
                outcomes["decoded"] += 1
            except ImageReadError:
                outcomes["refused (ImageReadError)"] += 1
            except Exception as exc:  # noqa: BLE001 - this is what we are looking for
                outcomes["UNHANDLED"] += 1
                save_crash("decoder", data, f"{label} on mutated {seed}: {type(exc).__name__}: {exc}"[:300])
                traceback.print_exc(limit=3)
    return outcomes


def fuzz_server(seconds: float, rng: random.Random, seeds: dict[str, bytes]) -> collections.Counter:
    from fastapi.testclient import TestClient

    import pneumoscan
    from pneumoscan.serving.app import create_app

    model = tiny_model(Path(tempfile.mkdtemp(prefix="pneumoscan-fuzz-")))
    outcomes: collections.Counter = collections.Counter()
    deadline = time.perf_counter() + seconds
    with TestClient(create_app(pneumoscan.load(model)), raise_server_exceptions=False) as client:
        for seed, data in inputs(rng, seeds):
            if time.perf_counter() > deadline:
                break
            name = rng.choice(["x.png", "x.jpeg", "x.dcm", "", "../../etc/passwd", "ü ñ.png", "a" * 300])
            kind = rng.choice(["image/png", "application/dicom", "text/plain", "application/octet-stream"])
            response = client.post("/v1/predict", files={"file": (name, data, kind)})
            outcomes[f"HTTP {response.status_code}"] += 1
            if response.status_code not in (200, 413, 415, 422):
                save_crash("upload", data, f"mutated {seed}: HTTP {response.status_code} {response.text[:200]}")
    return outcomes


def report(title: str, outcomes: collections.Counter, seconds: float) -> None:
    total = sum(outcomes.values())
    print(f"{title}: {total:,} calls in {seconds:.0f} s ({total / seconds:,.0f}/s)")
    for outcome, count in sorted(outcomes.items()):
        print(f"  {outcome:<28} {count:>8,}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60, help="time per target")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-server", action="store_true", help="fuzz only the decoder")
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # pydicom and Pillow warn on every damaged file
    rng = random.Random(args.seed)
    seeds = fuzz_seeds()
    decoder = fuzz_decoder(args.seconds, rng, seeds)
    report("decoder (read_image at 32 px and full size, probe_image)", decoder, args.seconds)
    unhandled = decoder["UNHANDLED"]
    if not args.no_server:
        server = fuzz_server(args.seconds, rng, seeds)
        report("upload endpoint POST /v1/predict", server, args.seconds)
        unhandled += sum(n for k, n in server.items() if k not in ("HTTP 200", "HTTP 413", "HTTP 415", "HTTP 422"))
    print(f"unhandled: {unhandled}")
    return 1 if unhandled else 0


if __name__ == "__main__":
    sys.exit(main())
