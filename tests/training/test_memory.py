"""Training keeps freed memory for its next step (pneumoscan._memory): measured as page faults in a child
process, so that the process-wide malloc settings never reach the test process."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")

# A training step's pattern: large tensors (over glibc's largest mmap threshold, 32 MiB) made and freed again.
CHILD = textwrap.dedent("""
    import resource, sys
    import torch
    if sys.argv[1] == "kept":
        from pneumoscan._memory import keep_freed_memory
        if not keep_freed_memory():
            print("unsupported")  # not glibc: nothing to check
            sys.exit()
        assert keep_freed_memory()  # idempotent
    def step():
        a = torch.ones(64, 40, 64, 64)  # 40 MiB, written
        b = a * 2.0
        return float(b[0, 0, 0, 0])
    faults = []
    for _ in range(12):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        step()
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(sorted(faults[1:])[5])  # the median step after the first (which faults its pages in either way)
""")


def _faults(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    last = done.stdout.strip().splitlines()[-1]
    if last == "unsupported":
        pytest.skip("a C library without glibc's mallopt")
    return int(last)


def test_freed_memory_is_reused_instead_of_faulted_in_again():
    # A step makes two 40 MiB tensors: 20,480 pages faulted in when each block comes from a fresh mmap.
    # (The median step: a kernel that reclaims idle pages, as DAMON does, may fault in a kept one again.)
    default, kept = _faults("default"), _faults("kept")
    assert default > 8000, f"glibc served the blocks from its heap already ({default} faults a step)"
    assert kept < 500, f"{kept} page faults a step with the memory kept"

