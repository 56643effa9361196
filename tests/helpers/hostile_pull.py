"""Run one `dicom pull` in this process under a memory cap and print what it cost, as one JSON line.

    python tests/helpers/hostile_pull.py MODEL URL OUT [--study UID] [--deadline S] [--read-timeout S]
        [--headroom-mib N]

The model is loaded first; then the address space is capped at what the process holds plus
``--headroom-mib`` (RLIMIT_AS), so that a pull that reads without bound fails with MemoryError instead of
taking the machine's memory. Printed: seconds, the error's one line (or null), peak RSS in MiB, at the
end and before the pull (the model loaded). Used by the pull tests and by bench/bench_pull.py.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time


def _vm_size() -> int:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmSize:"))
    return int(line.split()[1]) * 1024


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("url")
    parser.add_argument("out")
    parser.add_argument("--study", default="1.2.3.4")
    parser.add_argument("--since", default=None)
    parser.add_argument("--deadline", type=float, default=10.0)
    parser.add_argument("--read-timeout", type=float, default=5.0)
    parser.add_argument("--headroom-mib", type=int, default=1024)
    args = parser.parse_args(argv)

    from pneumoscan.dicom import Processor, pull
    from pneumoscan.dicom.bounded_http import PullLimits
    from pneumoscan.errors import PneumoscanError

    processor = Processor(args.model, args.out)
    limits = PullLimits(deadline=args.deadline, read_timeout=args.read_timeout)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    cap = _vm_size() + args.headroom_mib * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    start, error = time.monotonic(), None
    try:
        if args.since:
            pull(processor, args.url, since=args.since, limits=limits)
        else:
            pull(processor, args.url, study=args.study, limits=limits)
    except PneumoscanError as exc:
        error = str(exc)
    except MemoryError:
        error = "MemoryError"
    seconds = time.monotonic() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": round(seconds, 2), "error": error, "peak_rss_mib": round(peak, 1),
                      "rss_before_mib": round(before, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
