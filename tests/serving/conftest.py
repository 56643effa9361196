"""Fixtures for the server's tests: a tiny exported model and real radiographs to send it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from helpers.shared import once_per_run


@pytest.fixture(scope="session")
def served_run(tmp_path_factory) -> Path:
    """A run folder as training and export leave it: a random 64 px seed-cnn in ``model.safetensors`` and its
    ONNX export with the model card in ``export/`` (latency and the API do not depend on the weights).
    Made once per run, read-only."""

    def make(run: Path) -> None:
        import torch

        from pneumoscan import __version__
        from pneumoscan.models import ModelMeta, build_model, save_model
        from pneumoscan.serving.export import export_onnx

        torch.manual_seed(0)
        meta = ModelMeta(name="seed-cnn", image_size=64, threshold=0.5, version=__version__, run_id="test-run")
        save_model(run, build_model("seed-cnn", 64), meta)
        export_onnx(run)

    return once_per_run(tmp_path_factory, "served-run", make)


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
