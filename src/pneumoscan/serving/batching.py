"""Micro-batching: the decoded images of concurrent requests scored together, in one network call.

A network scores a batch of images in much less time than the same images one by one (ONNX Runtime's
EfficientNet-Lite0 on two cores: about half the time per image), so the server does not score each
request alone. A request hands its decoded image(s) to :class:`MicroBatcher`; the first image of a batch
opens it, and the batch is scored once a scoring slot is free and either it holds ``max_batch`` images
or ``max_wait`` seconds have passed since it opened (0: what joined while it waited for a slot). Each
batch is one :meth:`Classifier.assess <pneumoscan.inference.Classifier.assess>` call in a worker thread,
so every row still comes from the one row maker; each request gets back its own rows.

There is no background task: the request that opens a batch scores it (shielded from cancellation, as
other requests wait on it), so the batcher works in any event loop the app runs in.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import anyio
import numpy as np

from pneumoscan.inference import Classifier, Prediction
from pneumoscan.inference.rows import Source
from pneumoscan.serving.options import DEFAULT_BATCH_IMAGES, DEFAULT_BATCH_WAIT_MS

log = logging.getLogger("pneumoscan.serving")

# A request's result for one image: its row, or the exception that scoring it raised.
Scored = Prediction | Exception


@dataclass
class _Batch:
    classifier: Classifier
    deadline: float  # anyio.current_time() after which the batch waits for no more images
    images: list[np.ndarray] = field(default_factory=list)
    sources: list[Source] = field(default_factory=list)
    results: list[Scored] = field(default_factory=list)
    full: anyio.Event = field(default_factory=anyio.Event)
    done: anyio.Event = field(default_factory=anyio.Event)


class MicroBatcher:
    """Scores the images of concurrent requests in shared batches of at most ``max_batch`` images,
    waiting at most ``max_wait`` seconds after a batch's first image for more; at most ``concurrency``
    batches are scored at once. ``calls`` and ``images`` count the network calls made and the images
    they scored (``images / calls`` is the mean batch)."""

    def __init__(self, max_batch: int = DEFAULT_BATCH_IMAGES, max_wait: float = DEFAULT_BATCH_WAIT_MS / 1000,
                 concurrency: int = 1) -> None:
        if max_batch < 1 or max_wait < 0 or concurrency < 1:
            raise ValueError("max_batch and concurrency must be at least 1, max_wait at least 0")
        self.max_batch, self.max_wait, self.concurrency = max_batch, max_wait, concurrency
        self.calls = self.images = 0
        self._open: dict[bool, _Batch] = {}  # the batch that new images join, by scope check on or off
        self._slots: anyio.Semaphore | None = None  # made in the running event loop, on first use

    def stats(self) -> dict[str, float | int]:
        """The counters and settings, for ``/readyz``."""
        return {"network_calls": self.calls, "images": self.images,
                "mean_batch": round(self.images / self.calls, 2) if self.calls else 0.0,
                "max_batch": self.max_batch, "max_wait_ms": self.max_wait * 1000}

    async def assess(self, classifier: Classifier, images: Sequence[np.ndarray],
                     sources: Sequence[Source]) -> list[Scored]:
        """The rows of ``sources`` (none with an error) whose decoded images are ``images`` (the model's
        input, float32 (1, S, S)), in order, each scored in a batch shared with other requests; an image
        whose scoring raised gets the exception instead of its row, the others their rows."""
        if self._slots is None:
            self._slots = anyio.Semaphore(self.concurrency)
        placed: list[tuple[_Batch, int]] = []
        opened: list[_Batch] = []
        # No await from here to the end of the loop: the images join their batches in one step.
        for image, source in zip(images, sources, strict=True):
            batch = self._open.get(classifier.scope_check)
            if batch is None:
                batch = _Batch(classifier, anyio.current_time() + self.max_wait)
                self._open[classifier.scope_check] = batch
                opened.append(batch)
            placed.append((batch, len(batch.images)))
            batch.images.append(image)
            batch.sources.append(source)
            if len(batch.images) >= self.max_batch:
                self._close(batch)
        # Shielded: other requests' images are in the batches this request opened.
        with anyio.CancelScope(shield=True):
            async with anyio.create_task_group() as tasks:
                for batch in opened:
                    tasks.start_soon(self._score, batch)
            for batch, _ in placed:
                await batch.done.wait()
        return [batch.results[i] for batch, i in placed]

    def _close(self, batch: _Batch) -> None:
        """No more images join ``batch``; the next image opens a new one."""
        if self._open.get(batch.classifier.scope_check) is batch:
            del self._open[batch.classifier.scope_check]
        batch.full.set()

    async def _score(self, batch: _Batch) -> None:
        assert self._slots is not None
        try:
            async with self._slots:
                with anyio.move_on_after(batch.deadline - anyio.current_time()):
                    await batch.full.wait()
                self._close(batch)
                self.calls += 1
                self.images += len(batch.images)
                batch.results = await anyio.to_thread.run_sync(_assess, batch.classifier, batch.images, batch.sources)
        finally:
            if len(batch.results) != len(batch.images):  # never a request left without its result
                batch.results = [RuntimeError("the batch holding this image was not scored")] * len(batch.images)
            batch.done.set()


def _assess(classifier: Classifier, images: list[np.ndarray], sources: list[Source]) -> list[Scored]:
    """One network call for the batch; if it fails, each image alone, so that an image that breaks the
    network fails only its own request."""
    try:
        return list(classifier.assess(images, sources))
    except Exception as exc:  # noqa: BLE001 - handed to the request(s) it concerns
        if len(images) == 1:
            return [exc]
        log.warning("a batch of %d images failed (%s: %s); scoring them one by one", len(images),
                    type(exc).__name__, exc)
    return [result for image, source in zip(images, sources, strict=True)
            for result in _assess(classifier, [image], [source])]
