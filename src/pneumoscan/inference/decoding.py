"""Files into the model's input: decoded, checked and refused the same way for every entry point, and
decoded on worker processes for many files (``predict``'s table and its streamed ``--out`` alike)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from itertools import chain, islice
from typing import NamedTuple

import numpy as np

from pneumoscan.data.dicom_ids import read_dicom_identifiers
from pneumoscan.data.radiograph import read_radiograph
from pneumoscan.errors import ImageReadError
from pneumoscan.inference import scope

# Files per task sent to a decoding worker, and tasks in flight per worker: enough to keep every worker
# busy while the scorer runs, few enough that memory stays flat.
CHUNK, WINDOW_PER_WORKER = 32, 4


def decode_input(source: str | os.PathLike | bytes, image_size: int, fit: str, *, name: str | None = None,
                 scope_check: bool = True) -> tuple[np.ndarray | None, str | None]:
    """One file (or its bytes) as the model's input: ``(uint8 (S, S) pixels, None)``, or with the reason the
    scope rules refuse it: ``(None, reason)`` for a DICOM header they refuse with ``scope_check`` on (never
    decoded), ``(pixels, reason)`` otherwise. Raises :class:`ImageReadError` for what cannot be decoded and
    for what is not a radiograph (blank, colour picture, a few grey levels, near-flat)."""
    reason = scope.file_reason(source)
    if reason is not None and scope_check:
        return None, reason
    pixels = read_radiograph(source, image_size, fit, name=name)  # type: ignore[arg-type]
    return pixels, reason


class DecodedFile(NamedTuple):
    """A file decoded for scoring: the model's input, or why it gets no score."""

    path: str
    pixels: np.ndarray | None  # uint8 (S, S); None when the file cannot be scored
    error: str | None  # why it cannot be scored: unreadable, not a radiograph, out of scope (check on)
    ids: dict[str, str | None]  # the DICOM identifiers (all None for other files)
    reason: str | None = None  # with the scope check off: why the scope rules would refuse the scored pixels


def decode_file(path: str, image_size: int, fit: str, scope_check: bool = True) -> DecodedFile:
    """One file as the model's input, with its DICOM identifiers; every failure is a value, not an
    exception, so that one bad file never stops the others."""
    ids = read_dicom_identifiers(path)
    try:
        pixels, reason = decode_input(path, image_size, fit, scope_check=scope_check)
    except ImageReadError as exc:
        return DecodedFile(path, None, str(exc), ids)
    except Exception as exc:  # noqa: BLE001 - a decoder bug on one file must not stop the others
        return DecodedFile(path, None, f"{path}: unexpected error ({type(exc).__name__}: {exc})", ids)
    if reason is not None and scope_check:
        return DecodedFile(path, None, scope.message(path, reason), ids)
    return DecodedFile(path, pixels, None, ids, reason)


def _exit_with_parent(parent: int) -> None:
    """Runs first in each decoding worker: a worker whose run was killed (``kill -9``) exits too.

    Without this, the workers of a killed run wait forever on a queue that a sibling still holds open.
    """
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)
        return

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _decode_chunk(paths: list[str], image_size: int, fit: str, scope_check: bool = True) -> list[DecodedFile]:
    return [decode_file(path, image_size, fit, scope_check) for path in paths]


def decode_files(paths: Iterable[str], image_size: int, fit: str, workers: int = 1,
                 scope_check: bool = True) -> Iterator[DecodedFile]:
    """:func:`decode_file` of each of ``paths``, in order, on ``workers`` processes, reading ``paths``
    lazily, a bounded window ahead of the consumer."""
    remaining = iter(paths)
    chunks = iter(lambda: list(islice(remaining, CHUNK)), [])
    head = list(islice(chunks, 2))
    # A handful of files: starting processes costs more than it saves. A daemonic process (a worker of a
    # multiprocessing pool) may not start any.
    if workers <= 1 or len(head) < 2 or multiprocessing.current_process().daemon:
        for chunk in chain(head, chunks):
            yield from _decode_chunk(chunk, image_size, fit, scope_check)
        return
    with ProcessPoolExecutor(max_workers=workers, initializer=_exit_with_parent, initargs=(os.getpid(),)) as pool:
        window: deque = deque()
        for chunk in chain(head, chunks):
            window.append(pool.submit(_decode_chunk, chunk, image_size, fit, scope_check))
            if len(window) >= workers * WINDOW_PER_WORKER:
                yield from window.popleft().result()
        while window:
            yield from window.popleft().result()


__all__ = ["CHUNK", "DecodedFile", "decode_file", "decode_files", "decode_input"]
