"""Pieces the bench scripts share: the default architecture and a run folder with random weights."""

from __future__ import annotations

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


def resident_mib(pid: int) -> float:
    """The resident memory of process ``pid`` (VmRSS), MiB (NaN once it has ended)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return float("nan")
    return next((int(line.split()[1]) / 1024 for line in lines if line.startswith("VmRSS:")), float("nan"))
