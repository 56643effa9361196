"""The options of ``pneumoscan evaluate``."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class EvaluateConfig:
    """Options of ``pneumoscan evaluate``; saved as ``config.yaml`` in every report folder."""

    models: list[str] = field(default_factory=list)  # run folders or model files; several = an ensemble
    data: str | None = None  # dataset root or manifest; None = the run's split.csv, else the default data
    split: str = "test"  # "train", "val", "test" or "all"
    bootstrap: int = 1000  # resamples of patients for the confidence intervals
    seed: int = 0
    level: float = 0.95  # confidence level of the intervals
    bins: int = 10  # calibration bins (ECE, reliability diagram)
    tta: bool = False  # test-time augmentation: mean probability of the image and its horizontal flip
    calibrate: bool = False  # temperature scaling fitted on the run's validation predictions
    out: str | None = None  # report folder; default RUN/reports/<split>-<timestamp>/
    batch_size: int = 64
    gallery: int = 4  # worst false positives / negatives shown with Grad-CAM (when explain is available)
    device: str | None = None
