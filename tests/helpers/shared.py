"""Expensive read-only fixtures made once per test run, even under pytest-xdist.

A session fixture runs once per process: with ``-n 2`` both workers would export the same tiny model
(seconds each). :func:`once_per_run` makes the folder once, in the temporary folder the workers share;
the first worker to ask makes it while the others wait, and later ones take it as it is. Without xdist it
is an ordinary folder of the session. The tests that use such a folder only read it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest


def once_per_run(tmp_path_factory: pytest.TempPathFactory, name: str, make: Callable[[Path], object]) -> Path:
    """The folder ``name``, filled by ``make(folder)`` once per test run and shared by every worker."""
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        folder = tmp_path_factory.mktemp(name, numbered=True)
        make(folder)
        return folder
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp().parent  # this run's folder, above each worker's own
    folder, done = shared / name, shared / f"{name}.complete"
    with FileLock(str(shared / f"{name}.lock")):
        if not done.is_file():
            if folder.exists():  # a worker failed half-way through: start again
                shutil.rmtree(folder)
            folder.mkdir()
            make(folder)
            done.touch()
    return folder
