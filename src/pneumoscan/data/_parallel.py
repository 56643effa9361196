"""Run a per-file function over many files on every core, in order, with a progress bar."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

# Below this many items, starting worker processes costs more than it saves.
_MIN_PARALLEL = 64


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_parent(parent: int) -> None:
    """Worker initializer: a ``kill -9`` of the command must not leave its workers behind.

    On Linux the kernel sends SIGKILL to the worker when the process that started it dies
    (``PR_SET_PDEATHSIG``); the parent may already be gone by the time that is set, hence the check
    after it. Elsewhere a worker notices a dead parent when its pipe breaks.
    """
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:
        os._exit(1)


def default_workers() -> int:
    """The cores this process may use (at most 8: decoding is memory-bound beyond that)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    return max(1, min(cores, 8))


def parallel_map(
    func: Callable[[T], R], items: Sequence[T], workers: int | None = None, progress: bool = False,
    desc: str = "", chunksize: int = 32,
) -> Iterator[R]:
    """Yield ``func(item)`` for every item, in order; ``func`` must be a module-level function.

    ``func`` should catch its own expected errors and return them as values: one bad file must
    never stop the other thousands.
    """
    from tqdm.auto import tqdm

    workers = workers or default_workers()
    with tqdm(total=len(items), desc=desc, unit="img", disable=not progress, leave=False) as bar:
        if workers <= 1 or len(items) < _MIN_PARALLEL:
            for item in items:
                yield func(item)
                bar.update()
            return
        chunksize = max(1, min(chunksize, len(items) // (workers * 4) or 1))
        with ProcessPoolExecutor(max_workers=workers, initializer=_die_with_parent,
                                 initargs=(os.getpid(),)) as pool:
            for result in pool.map(func, items, chunksize=chunksize):
                yield result
                bar.update()
