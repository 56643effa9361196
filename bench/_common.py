"""Pieces the bench scripts share: the default architecture and a run folder with random weights."""

from __future__ import annotations

import os
from pathlib import Path


def default_architecture() -> tuple[str, int]:
    """The training recipe's default network and image size."""
    from pneumoscan.training.config import TrainConfig

    config = TrainConfig()
    return config.model, int(config.image_size)


def random_run(folder: Path, name: str, size: int, fit: str = "pad") -> Path:
    """A run folder holding a randomly initialised ``name`` (speed does not depend on the weights)."""
    import torch

    from pneumoscan import __version__
    from pneumoscan.models import ModelMeta, build_model, save_model

    torch.manual_seed(0)
    save_model(folder, build_model(name, size), ModelMeta(name=name, image_size=size, fit=fit, version=__version__,
                                                          run_id="bench-random-weights"))
    return folder


def cpu_seconds(pid: int) -> float:
    """CPU time (user and system, all threads) process ``pid`` has used so far, s (NaN once it has ended)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def resident_mib(pid: int) -> float:
    """The resident memory of process ``pid`` (VmRSS), MiB (NaN once it has ended)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return float("nan")
    return next((int(line.split()[1]) / 1024 for line in lines if line.startswith("VmRSS:")), float("nan"))
