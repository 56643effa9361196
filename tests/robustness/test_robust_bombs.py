"""Small files made to cost gigabytes (``helpers.bombs``: a JP2 ``uuid`` box with a fake SIZ, an Extended
Offset Table naming a second, huge fragment, 5 million code-blocks, a million empty sequence items, a
deflated data set of 1 GiB) are refused by `pneumoscan predict`, the server (an upload) and the DICOM node
(a C-STORE) within 10 s, with a one-line reason, the process staying under 1 GiB.

Everything runs in one child process whose address space is capped (``RLIMIT_AS``, 1.5 GiB): a bomb that
gets through fails to allocate there, and the test fails, instead of taking the machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import pneumoscan.bundled
from helpers.bombs import BOMBS

REPO = Path(__file__).resolve().parents[2]
SECONDS, PEAK_MB, RLIMIT = 10.0, 1024, int(1.5 * 2**30)
FRAME = "refused as a decompression bomb: the compressed frame declares 24000x24000"
REASONS = {"jp2-uuid": FRAME, "offset-table": FRAME,
           "code-blocks": "refused as a decompression bomb: the JPEG 2000 codestream declares 1 tile(s) and about",
           "sequence": "over 20,000 elements and sequence items",
           "deflate": "refused as a decompression bomb: the deflated DICOM inflates beyond 8 MiB"}


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux: RLIMIT_AS and /proc (VmHWM)")
def test_every_bomb_ends_within_10_s_under_1_gib_with_a_one_line_reason(tmp_path) -> None:
    for name, make in BOMBS.items():
        (tmp_path / f"{name}.dcm").write_bytes(make())
    model = Path(pneumoscan.bundled.__file__).parent / "model.onnx"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO / "tests")]),
           "PNEUMOSCAN_BOMB_RLIMIT": str(RLIMIT),
           # The address-space cap counts every thread's malloc arena (64 MiB reserved each, mostly never
           # touched): the node's scorer and association threads would take it near the cap with no memory used.
           "MALLOC_ARENA_MAX": "2"}
    argv = [sys.executable, "-m", "helpers.bomb_child", str(model), str(tmp_path), *(f"{n}.dcm" for n in BOMBS)]
    try:
        child = subprocess.run(argv, capture_output=True, text=True, timeout=90 + SECONDS * 3 * len(BOMBS), env=env)
    except subprocess.TimeoutExpired as exc:
        started = [line for line in (exc.stdout or "").splitlines() if '"start"' in line]
        pytest.fail(f"hung on {started[-1] if started else 'start-up'}")
    lines = [json.loads(line) for line in child.stdout.splitlines() if line.startswith("{")]
    results = [r for r in lines if "bomb" in r]
    assert child.returncode == 0 and len(results) == 3 * len(BOMBS), (child.stdout[-3000:], child.stderr[-3000:])
    problems = []
    for r in results:
        name = r["bomb"].removesuffix(".dcm")
        if REASONS[name] not in r["said"] or "\n" in r["said"]:
            problems.append(f"{name} via {r['entry']}: {r['said']}")
        if r["seconds"] > SECONDS or r["peak_mb"] > PEAK_MB:
            problems.append(f"{name} via {r['entry']}: {r['seconds']:.1f} s, peak {r['peak_mb']:.0f} MB")
    assert not problems, "\n".join(problems)
