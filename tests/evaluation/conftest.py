"""Fixtures for evaluation tests (the run folder itself is made by helpers.fake_runs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.fake_runs import make_dataset, make_run


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data"), {"train": 4, "val": 8, "test": 12})


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_data) -> Path:
    return make_run(tmp_path_factory.mktemp("run-a"), tiny_data, threshold=0.5)

