"""Send each DICOM bomb to `pneumoscan predict`, the server and the DICOM node; print time and peak memory.

    PYTHONPATH=src .venv/bin/python bench/bench_bombs.py                 # the bombs of tests/helpers/bombs.py
    PYTHONPATH=src .venv/bin/python bench/bench_bombs.py --pixel-limit   # and an honest 8000x8000 frame

Each bomb runs in its own child process (tests/helpers/bomb_child.py) with the bundled model, its address
space capped (--rlimit-gib, default 1.5) so that a bomb that gets through fails to allocate instead of
taking the machine. Printed per bomb and entry point: seconds, the child's peak resident size (VmHWM, the
whole process: model and server included; "ready" is the same before any bomb) and the reason given.
``--pixel-limit`` adds a 0.3 kB JPEG 2000 frame of 8000 x 8000 zeros (the pixel limit, 64 Mpx) whose
header says so honestly: the most any accepted DICOM can cost.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from helpers import bombs  # noqa: E402


def pixel_limit_bomb(side: int = 8000) -> bytes:
    import numpy as np
    from openjpeg import encode

    return bombs._compressed([encode(np.zeros((side, side), np.uint8), codec_format=0)], Rows=side, Columns=side,
                             WindowCenter=128, WindowWidth=256)


def run(folder: Path, name: str, rlimit: int) -> list[dict]:
    import pneumoscan.bundled

    model = Path(pneumoscan.bundled.__file__).parent / "model.onnx"
    paths = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(ROOT / "tests")) if p)
    env = {**os.environ, "PYTHONPATH": paths, "PNEUMOSCAN_BOMB_RLIMIT": str(rlimit)}
    child = subprocess.run([sys.executable, "-m", "helpers.bomb_child", str(model), str(folder), name],
                           capture_output=True, text=True, env=env, timeout=600)
    lines = [json.loads(line) for line in child.stdout.splitlines() if line.startswith("{")]
    if child.returncode != 0:
        lines.append({"bomb": name, "entry": "child", "seconds": 0, "peak_mb": 0,
                      "said": f"exit {child.returncode}: {child.stderr.strip().splitlines()[-1:]}"})
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rlimit-gib", type=float, default=1.5)
    parser.add_argument("--pixel-limit", action="store_true", help="add the honest 8000x8000 frame")
    args = parser.parse_args()
    made = {name: make() for name, make in bombs.BOMBS.items()}
    made["sequence-19mb"] = bombs.sequence_bomb(2_400_000)  # under the server's 20 MiB upload limit
    if args.pixel_limit:
        made["pixel-limit"] = pixel_limit_bomb()
    print(f"{'bomb':<14} {'bytes':>10} {'entry':<8} {'seconds':>8} {'peak MB':>8}  reason")
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in made.items():
            (Path(tmp) / f"{name}.dcm").write_bytes(data)
            for line in run(Path(tmp), f"{name}.dcm", int(args.rlimit_gib * 2**30)):
                if line.get("ready"):
                    print(f"{name:<14} {len(data):>10,} {'ready':<8} {'':>8} {line['peak_mb']:>8.0f}")
                elif "bomb" in line:
                    print(f"{name:<14} {len(data):>10,} {line['entry']:<8} {line['seconds']:>8.2f} "
                          f"{line['peak_mb']:>8.0f}  {line['said'][:150]}")


if __name__ == "__main__":
    main()
