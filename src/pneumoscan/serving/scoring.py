"""A request's work in the server, off the event loop: admission (503 beyond the queue), uploads sniffed
and decoded in a pool of threads by the project's one decoder, scoring in batches shared by concurrent
requests (:mod:`~pneumoscan.serving.batching`), and the rows of what could not be scored."""

from __future__ import annotations

import dataclasses
import io
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import anyio
import numpy as np
from fastapi import HTTPException
from PIL import Image, UnidentifiedImageError

from pneumoscan.data.image import PIL_FORMATS, is_dicom
from pneumoscan.errors import ImageReadError
from pneumoscan.inference import Classifier, Prediction
from pneumoscan.inference.rows import Source
from pneumoscan.serving.batching import MicroBatcher, Scored

log = logging.getLogger("pneumoscan.serving")

T = TypeVar("T")


class Admission:
    """Admission and the threads a request's work runs in: at most ``concurrency + queue`` requests in
    progress (beyond that, 503 at once rather than an unbounded backlog); uploads decoded by at most
    ``decode_threads`` threads; explanations one at a time; scoring by the shared ``batcher``."""

    def __init__(self, concurrency: int, queue: int, decode_threads: int, batcher: MicroBatcher) -> None:
        self.capacity, self.decode_threads, self.batcher = concurrency + queue, decode_threads, batcher
        self.pending = 0
        self._limiters: dict[bool, anyio.CapacityLimiter] = {}

    @asynccontextmanager
    async def admit(self) -> AsyncIterator[None]:
        """One request in progress while the block runs; 503 when ``concurrency + queue`` already are."""
        if self.pending >= self.capacity:
            raise HTTPException(503, f"server busy: {self.pending} requests in progress; retry shortly",
                                headers={"Retry-After": "1"})
        self.pending += 1
        try:
            yield
        finally:
            self.pending -= 1

    async def run(self, func: Callable[..., T], *args: Any, exclusive: bool = False) -> T:
        """``func(*args)`` in a decoding thread, or with ``exclusive`` alone (explanations)."""
        if exclusive not in self._limiters:  # created lazily, inside the running event loop
            self._limiters[exclusive] = anyio.CapacityLimiter(1 if exclusive else self.decode_threads)
        return await anyio.to_thread.run_sync(func, *args, limiter=self._limiters[exclusive])


def prepare(classifier: Classifier, data: bytes, name: str) -> tuple[np.ndarray, Source]:
    """(in a decoding thread) One upload as the model's input and its source; HTTP errors for what the
    client sent (422 for a DICOM header out of scope)."""
    image, reason = _decode(classifier, data, name)
    return image, Source.upload(name, data, reason=reason)


def prepare_item(classifier: Classifier, data: bytes, name: str) -> tuple[np.ndarray | None, Source]:
    """:func:`prepare` for a batch's file: what is wrong with it goes on its source, for its row."""
    try:
        return prepare(classifier, data, name)
    except HTTPException as exc:
        return None, Source.upload(name, data, error=str(exc.detail))


def rows_of(classifier: Classifier, decoded: list[tuple[np.ndarray | None, Source]],
            scored: list[Scored]) -> list[Prediction]:
    """Every upload's row, in order: the scored ones' (``scored``, in order), and from the row maker those
    of the files that could not be decoded or scored."""
    results = iter(scored)
    rows: list[Prediction | Source] = []
    for image, source in decoded:
        result = next(results) if image is not None else source
        if isinstance(result, Exception):  # only this file's scoring failed: its row says so
            log.error("unexpected error scoring %s", source.file, exc_info=result)
            result = dataclasses.replace(source, error=f"{source.file}: internal error while scoring this file; "
                                                       "the server log has the details")
        rows.append(result)
    unscored = iter(classifier.assess([], [row for row in rows if isinstance(row, Source)]))
    return [row if isinstance(row, Prediction) else next(unscored) for row in rows]


def _decode(classifier: Classifier, data: bytes, name: str) -> tuple[np.ndarray, str | None]:
    if not data:
        raise HTTPException(422, f"{name}: empty file (0 bytes); choose a JPEG, PNG or DICOM radiograph")
    if not _looks_like_image(data):
        raise HTTPException(415, f"{name}: not an image; send a JPEG, PNG or DICOM radiograph")
    try:
        return classifier.prepare(data, name=name)
    except ImageReadError as exc:  # OutOfScopeError included: 422 with the reason
        raise HTTPException(422, str(exc)) from None
    except Exception as exc:  # a decoder's own bug on one odd file: answer, log, and keep serving
        log.exception("unexpected error decoding %s", name)
        raise HTTPException(422, f"{name}: cannot decode this file ({type(exc).__name__})") from None


def _looks_like_image(data: bytes) -> bool:
    """True when the bytes are DICOM or a format Pillow recognises (header only: nothing is decoded)."""
    if is_dicom(data[:132]):
        return True
    try:
        with Image.open(io.BytesIO(data), formats=PIL_FORMATS):
            return True
    except UnidentifiedImageError:
        return False
    except Exception:  # Pillow knew the format but not the content: the decoder will say what is wrong
        return True
