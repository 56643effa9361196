"""Fixtures for the server's tests: a tiny exported model and real radiographs to send it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def served_run(exported_run) -> Path:
    """The run folder the server's tests serve: the suite's exported run (64 px mini-resnet with its ONNX
    export and model card)."""
    return exported_run


@pytest.fixture(scope="session")
def real_images(shared_data) -> list[Path]:
    """Two NORMAL and two PNEUMONIA training radiographs (224 px JPEG) from ../shared/data."""
    images: list[Path] = []
    for cls in ("NORMAL", "PNEUMONIA"):
        images += sorted((shared_data / "chest_xray" / "train" / cls).glob("*.jpeg"))[:2]
    return images


@pytest.fixture(scope="session")
def radiographs(request, tmp_path_factory) -> list[Path]:
    """Real radiographs when ../shared/data is present, else synthetic JPEGs: the browser test runs wherever
    Chromium does, not only where the data is."""
    try:
        return request.getfixturevalue("real_images")
    except pytest.skip.Exception:
        from helpers.synthetic import write_synthetic_image

        folder = tmp_path_factory.mktemp("radiographs")
        return [write_synthetic_image(folder / f"synthetic-{label}.jpeg", label, seed=label, size=224)
                for label in (0, 1)]


@pytest.fixture(scope="session")
def original_image(shared_data) -> Path:
    """A full-resolution original radiograph (grayscale JPEG, about 2,000 px)."""
    originals = sorted((shared_data / "chest_xray_originals" / "PNEUMONIA").glob("*.jpeg"))
    if not originals:
        pytest.skip("no chest_xray_originals/PNEUMONIA/*.jpeg in the shared data")
    return originals[0]


def _wait_ready(client, timeout: float = 30.0) -> dict:
    """Poll ``/readyz`` until the model is loaded; fail with its last answer otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        response = client.get("/readyz")
        if response.status_code == 200 or time.monotonic() > deadline:
            assert response.status_code == 200, response.text
            return response.json()
        time.sleep(0.05)


@pytest.fixture(scope="session")
def wait_ready():
    """``wait_ready(client)``: poll ``/readyz`` (of a TestClient or an httpx.Client) until the model is loaded."""
    return _wait_ready
