"""Micro-batching in the server: real concurrent requests (httpx against the app in this event loop) on real
radiographs with the bundled model, its network calls counted by a wrapper around its real backend.

No test here depends on timing: batches are closed by their size (the wait bound is set far beyond what
the test takes), or by what is waiting when every task is blocked (``anyio.wait_all_tasks_blocked``).
"""

from __future__ import annotations

import threading
from pathlib import Path

import anyio
import httpx
import numpy as np
import pytest

import pneumoscan
from pneumoscan.inference import Classifier
from pneumoscan.inference.rows import Source
from pneumoscan.serving.app import create_app
from pneumoscan.serving.batching import MicroBatcher

NEVER_MS = 120_000.0  # a wait bound no test reaches: its batches close when full


class CountingBackend:
    """The real backend, recording the number of images of each network call; ``poison``: an input that
    makes any call holding it fail (a network that breaks on one image); ``hold``: the first call waits
    until it is set."""

    def __init__(self, backend, poison: np.ndarray | None = None, hold: threading.Event | None = None) -> None:
        self.backend, self.name, self.poison, self.hold = backend, backend.name, poison, hold
        self.calls: list[int] = []

    def scores(self, batch: np.ndarray):
        self.calls.append(len(batch))
        if self.hold is not None and len(self.calls) == 1:
            assert self.hold.wait(60)
        if self.poison is not None and any(np.array_equal(x, self.poison) for x in batch):
            raise RuntimeError("the network failed on this image")
        return self.backend.scores(batch)

    def logits(self, batch: np.ndarray) -> np.ndarray:
        return self.scores(batch)[0]


@pytest.fixture(scope="module")
def bundled() -> Classifier:
    """The shipped model (ONNX Runtime, with its scope gate), unbatched: the reference for every row."""
    return pneumoscan.load()


@pytest.fixture(scope="module")
def uploads(real_images, original_image) -> list[tuple[str, bytes, Path]]:
    """Ten uploads under ten names: four 224 px radiographs and a full-size original, twice each."""
    files = [*real_images, original_image] * 2
    return [(f"{i:02d}-{path.name}", path.read_bytes(), path) for i, path in enumerate(files)]


def _counting(model: Classifier, **kwargs) -> tuple[Classifier, CountingBackend]:
    backend = CountingBackend(model.backend, **kwargs)
    return Classifier(backend, model.meta, files=model.files), backend


async def _post_all(app, requests: list[tuple[str, list[tuple[str, bytes]]]]) -> list[httpx.Response]:
    """Send every request at once (``(route, [(name, bytes)])``), answers in order."""
    answers: list[httpx.Response | None] = [None] * len(requests)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)  # a 500 is an answer
    async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=120) as client:
        async def send(i: int, route: str, files: list[tuple[str, bytes]]) -> None:
            field = "files" if route.endswith("/batch") else "file"
            answers[i] = await client.post(route, files=[(field, (name, data)) for name, data in files])

        async with anyio.create_task_group() as tasks:
            for i, (route, files) in enumerate(requests):
                tasks.start_soon(send, i, route, files)
    return answers  # type: ignore[return-value]


async def _get(app, route: str) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        return await client.get(route)


def _assert_row(row: dict, name: str, data: bytes, path: Path, bundled: Classifier) -> None:
    """``row`` is what the unbatched classifier gives for the same file, under the upload's name."""
    expected = bundled.predict([path])[0]
    assert row["filename"] == row["file"] == name
    assert row["probability"] == pytest.approx(expected.probability, abs=1e-5)
    assert (row["label"], row["threshold"], row["model"], row["error"]) == (
        expected.label, expected.threshold, expected.model, None)
    assert row["size"] == len(data)


def test_concurrent_requests_share_network_calls_and_each_gets_its_own_row(bundled, uploads):
    model, backend = _counting(bundled)
    app = create_app(model, batch_images=5, batch_wait_ms=NEVER_MS, max_concurrency=1)

    answers = anyio.run(_post_all, app, [("/v1/predict", [(name, data)]) for name, data, _ in uploads])

    assert backend.calls == [5, 5]  # ten requests, two network calls
    for (name, data, path), answer in zip(uploads, answers, strict=True):
        assert answer.status_code == 200, answer.text
        _assert_row(answer.json(), name, data, path, bundled)
    stats = anyio.run(_get, app, "/readyz").json()["batching"]
    assert (stats["network_calls"], stats["images"], stats["mean_batch"]) == (2, 10, 5.0)


def test_a_corrupt_upload_gets_its_own_error_while_the_others_in_its_batch_are_scored(bundled, uploads):
    model, backend = _counting(bundled)
    app = create_app(model, batch_images=4, batch_wait_ms=NEVER_MS)
    good = uploads[:4]
    truncated = ("truncated.jpeg", good[0][1][: len(good[0][1]) // 2])
    requests = [("/v1/predict", [(name, data)]) for name, data, _ in good]
    requests[2:2] = [("/v1/predict", [truncated]), ("/v1/predict", [("notes.jpeg", b"not an image")])]

    answers = anyio.run(_post_all, app, requests)

    assert backend.calls == [4]  # the bad uploads never reach the network
    bad = {answers[2].status_code: answers[2].json()["detail"], answers[3].status_code: answers[3].json()["detail"]}
    assert bad.keys() == {422, 415} and "truncated.jpeg" in bad[422] and "notes.jpeg" in bad[415]
    for (name, data, path), answer in zip(good, answers[:2] + answers[4:], strict=True):
        assert answer.status_code == 200, answer.text
        _assert_row(answer.json(), name, data, path, bundled)


def test_batch_requests_and_single_requests_share_network_calls_with_bad_files_on_their_rows(bundled, uploads):
    model, backend = _counting(bundled)
    app = create_app(model, batch_images=7, batch_wait_ms=NEVER_MS)
    files = [(name, data) for name, data, _ in uploads]
    requests = [("/v1/predict/batch", files[:3]), ("/v1/predict/batch", [files[3], ("bad.png", b"\x89PNG\r\n\x1a\n"), files[4]]),
                ("/v1/predict", [files[5]]), ("/v1/predict", [files[6]])]

    answers = anyio.run(_post_all, app, requests)

    assert backend.calls == [7]  # seven good images in four requests, one network call
    assert all(answer.status_code == 200 for answer in answers), [a.text for a in answers]
    first, second = answers[0].json()["results"], answers[1].json()["results"]
    assert second[1]["filename"] == "bad.png" and second[1]["probability"] is None and "bad.png" in second[1]["error"]
    scored = [*first, second[0], second[2], answers[2].json(), answers[3].json()]
    for (name, data, path), row in zip(uploads[:7], scored, strict=True):
        _assert_row(row, name, data, path, bundled)


def test_an_image_that_breaks_the_network_fails_only_its_own_request(bundled, uploads):
    model, backend = _counting(bundled, poison=bundled.prepare(uploads[1][1])[0])
    app = create_app(model, batch_images=5, batch_wait_ms=NEVER_MS)
    poisoned_name, poisoned_data, _ = uploads[6]  # the same file as uploads[1], under another name
    requests = [("/v1/predict", [(name, data)]) for name, data, _ in uploads[:3]]
    requests.append(("/v1/predict/batch", [(uploads[3][0], uploads[3][1]), (poisoned_name, poisoned_data)]))

    answers = anyio.run(_post_all, app, requests)

    assert backend.calls == [5, 1, 1, 1, 1, 1]  # the batch, then each image alone
    assert answers[1].status_code == 500 and "internal error" in answers[1].json()["detail"]
    for i in (0, 2):
        assert answers[i].status_code == 200, answers[i].text
        _assert_row(answers[i].json(), *uploads[i], bundled)
    rows = answers[3].json()["results"]
    _assert_row(rows[0], *uploads[3], bundled)
    assert rows[1]["probability"] is None and rows[1]["error"].startswith(f"{poisoned_name}: internal error")


def test_no_wait_scores_what_joined_while_the_scorer_was_busy_in_one_call(bundled, uploads):
    """With a wait of 0 a batch waits for no image; those that arrive while a batch is being scored make
    the next batch together."""
    hold = threading.Event()
    model, backend = _counting(bundled, hold=hold)
    batcher = MicroBatcher(max_batch=32, max_wait=0, concurrency=1)
    images = [model.prepare(data)[0] for _, data, _ in uploads[:5]]
    rows: list = [None] * 5

    async def score(i: int) -> None:
        [rows[i]] = await batcher.assess(model, [images[i]], [Source(uploads[i][0])])

    async def main() -> None:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(score, 0)
            await anyio.wait_all_tasks_blocked()  # the first image is in the network, which holds
            for i in range(1, 5):
                tasks.start_soon(score, i)
            await anyio.wait_all_tasks_blocked()  # the other four wait for the scorer
            hold.set()

    anyio.run(main)
    assert backend.calls == [1, 4]
    for (name, _, path), row in zip(uploads[:5], rows, strict=True):
        assert row.file == name and row.probability == pytest.approx(bundled.predict([path])[0].probability, abs=1e-5)
