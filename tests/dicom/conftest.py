"""Fixtures for the DICOM tests: a small model, radiographs to wrap in DICOM, and a real Orthanc."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import orthanc


@pytest.fixture(scope="session")
def dicom_model(tmp_path_factory) -> Path:
    """A run folder with a 64 px seed-cnn (random weights: the tests compare numbers between paths, which
    do not depend on training) and two operating points besides its threshold."""
    import torch

    from pneumoscan import __version__
    from pneumoscan.models import ModelMeta, build_model, save_model

    torch.manual_seed(0)
    run = tmp_path_factory.mktemp("dicom-run")
    meta = ModelMeta(name="seed-cnn", image_size=64, threshold=0.5, operating_points={"sens95": 0.2, "spec95": 0.8},
                     version=__version__, run_id="dicom-test-run")
    save_model(run, build_model("seed-cnn", 64), meta)
    return run


@pytest.fixture(scope="session")
def grays(request, tmp_path_factory) -> list[np.ndarray]:
    """Five 8-bit radiographs: real ones from ../shared/data when present, else synthetic ones (the DICOM
    paths are tested wherever Orthanc runs, not only where the data is)."""
    try:
        root = request.getfixturevalue("shared_data")
    except pytest.skip.Exception:
        root = None
    if root is not None:
        files = [f for cls in ("NORMAL", "PNEUMONIA") for f in sorted((root / "chest_xray" / "train" / cls).glob("*.jpeg"))[:3]]
        return [np.asarray(Image.open(f).convert("L")) for f in files[:5]]
    from helpers.synthetic import write_synthetic_image

    folder = tmp_path_factory.mktemp("grays")
    return [np.asarray(Image.open(write_synthetic_image(folder / f"{i}.png", i % 2, seed=i, size=160)))
            for i in range(5)]


@pytest.fixture(scope="session")
def orthanc_ready() -> None:
    if (why := orthanc.missing()) is not None:
        pytest.skip(why)
