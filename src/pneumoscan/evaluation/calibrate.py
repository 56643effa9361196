"""Site calibration: re-fit the operating threshold and a temperature on a small labelled sample of a site.

A model trained at one hospital sees another hospital's radiographs with a shifted score distribution:
its ranking may hold while its threshold and probabilities do not. Real deployments check a model on a
small labelled sample of their own before use; ``calibrate`` turns that sample into a new model version
(the original file is never changed) whose threshold meets a target sensitivity on the site's own images
and whose temperature makes its probabilities honest there. Both come with their bootstrap interval.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from pneumoscan._io import atomic_write_json, atomic_write_text
from pneumoscan.errors import DatasetError
from pneumoscan.evaluation import metrics as M
from pneumoscan.evaluation.operating import (
    apply_temperature,
    fit_temperature,
    logit,
    target_sensitivity_threshold,
)

MIN_PER_CLASS = 20  # below this the threshold's interval is too wide to be useful: warned about


@dataclass(frozen=True)
class SiteCalibration:
    """What was fitted on the site's sample, in the calibrated model's probability space."""

    threshold: float
    threshold_interval: tuple[float, float]
    temperature: float  # applied to the network's raw logit (replaces the model's own temperature)
    target_sensitivity: float
    images: int
    patients: int
    normal: int
    pneumonia: int
    sensitivity: float  # on the sample, at ``threshold`` (optimistic: chosen on it)
    specificity: float
    resamples: int
    seed: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fit_site_calibration(labels: np.ndarray, raw_probs: np.ndarray, patients: np.ndarray | list[str],
                         target_sensitivity: float = 0.95, resamples: int = 1000, seed: int = 0) -> SiteCalibration:
    """Fit a temperature and a target-sensitivity threshold on a site's labelled sample.

    ``raw_probs`` are ``sigmoid(raw logit)`` (temperature 1). The threshold is the median, over
    bootstrap resamples of the sample's patients, of the highest threshold whose sensitivity reaches
    ``target_sensitivity``; its 95 % interval is the percentile interval of the same resamples.
    Raises :class:`DatasetError` when the sample lacks a class.
    """
    labels = np.asarray(labels, dtype=np.int64)
    raw_probs = np.asarray(raw_probs, dtype=np.float64)
    counts = np.bincount(labels, minlength=2)
    if counts.min() == 0:
        present = "NORMAL" if counts[0] else "PNEUMONIA"
        raise DatasetError(f"the calibration sample holds only {present} images ({int(counts.max())}); a threshold "
                           "and a temperature need labelled images of both classes")
    if not 0.0 < target_sensitivity < 1.0:
        raise DatasetError(f"--target-sensitivity must be between 0 and 1, not {target_sensitivity}")
    temperature = fit_temperature(labels, raw_probs)
    probs = apply_temperature(raw_probs, temperature)
    threshold, interval = target_sensitivity_threshold(labels, probs, target_sensitivity, patients, resamples, seed)
    at = M.threshold_metrics(labels, probs, threshold)
    return SiteCalibration(
        threshold=threshold, threshold_interval=interval, temperature=float(temperature),
        target_sensitivity=float(target_sensitivity), images=len(labels), patients=len(set(map(str, patients))),
        normal=int(counts[0]), pneumonia=int(counts[1]), sensitivity=float(at["sensitivity"]),
        specificity=float(at["specificity"]), resamples=resamples, seed=seed,
    )


@dataclass
class CalibrationResult:
    """The new model version and what it was calibrated on."""

    folder: Path
    model_file: Path
    calibration: SiteCalibration
    original: Path


def calibrate(model: str | os.PathLike, data: str | os.PathLike, target_sensitivity: float = 0.95,
              out: str | os.PathLike | None = None, resamples: int = 1000, seed: int = 0) -> CalibrationResult:
    """Write a site-calibrated version of ``model`` (run folder or model file) fitted on ``data``.

    ``data`` is a labelled folder or CSV manifest from the site; every labelled image is used. The new
    version goes to ``out`` (default ``RUN/calibrated/<data name>-<timestamp>/``): ``model.safetensors``
    with the new threshold, temperature and operating points, ``model.json``, ``calibration.json`` and a
    model card. The original file is only read.
    """
    from pneumoscan.data import build_cache, load_dataset
    from pneumoscan.models import load_model, save_model
    from pneumoscan.runs import (
        CALIBRATION_JSON,
        CALIBRATION_README,
        calibrated_folder,
        find_model_file,
        run_folder_of,
        weights_beside,
    )
    from pneumoscan.serving.model_card import write_model_card

    source = find_model_file(model)
    if source.suffix == ".onnx":
        source = weights_beside(source) or source
    network, meta = load_model(source)
    index = load_dataset(data)
    samples = [s for s in index.samples if s.label is not None]
    if not samples:
        raise DatasetError(f"{data}: no labelled images to calibrate on")
    cache = build_cache(samples, meta.image_size, meta.fit, progress=False)
    images, kept = cache.subset(None)
    if len(kept) == 0:
        raise DatasetError(f"{data}: none of the {len(samples)} images could be decoded")
    import pneumoscan

    scored = pneumoscan.load(source).predict_proba(images)
    # Back to temperature 1: the new temperature replaces the model's own, it does not stack on it.
    raw = apply_temperature(scored, 1.0 / float(meta.temperature or 1.0))
    labels = np.array([s.label for s in kept], dtype=np.int64)
    patients = np.array([s.patient_id for s in kept], dtype=str)
    try:
        fitted = fit_site_calibration(labels, raw, patients, target_sensitivity, resamples, seed)
    except DatasetError as exc:
        raise DatasetError(f"{data}: {exc}") from None

    original_temperature = float(meta.temperature or 1.0)

    def convert(threshold: float) -> float:
        # The same decision as before, expressed in the new probability space (temperature is monotone).
        z = float(logit(np.array([threshold]))[0]) * original_temperature / fitted.temperature
        return float(1.0 / (1.0 + np.exp(-z)))

    points = {name: convert(t) for name, t in meta.operating_points.items()}
    points["original"] = convert(meta.threshold)
    points["site"] = fitted.threshold
    stamp = time.strftime("%Y%m%d-%H%M%S")
    folder = Path(out) if out else calibrated_folder(run_folder_of(source), _name(data), stamp)
    record = {
        **fitted.to_dict(),
        "data": str(Path(data).resolve()),
        "original_model": str(source.resolve()),
        "original_threshold": float(meta.threshold),
        "original_temperature": original_temperature,
        "rule": (f"median over {resamples} patient-bootstrap resamples of the site sample of the highest "
                 f"threshold with sensitivity >= {target_sensitivity:g}; temperature fitted on the same sample"),
        "unreadable": [r for _, r in cache.failures],
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    new_meta = replace(
        meta, threshold=fitted.threshold, temperature=fitted.temperature, operating_points=points,
        run_id=f"{meta.run_id}+calibrated-{stamp}", created=record["created"],
        provenance={**meta.provenance, "calibration": record},
    )
    model_file = save_model(folder, network, new_meta)
    atomic_write_json(folder / CALIBRATION_JSON, record)
    write_model_card(folder, new_meta)
    atomic_write_text(folder / CALIBRATION_README, _readme(record))
    return CalibrationResult(folder, model_file, fitted, source)


def _name(data: str | os.PathLike) -> str:
    path = Path(data).resolve()
    return (path.stem if path.is_file() else path.name) or "site"


def _readme(record: dict[str, Any]) -> str:
    from pneumoscan.provenance import DISCLAIMER

    low, high = record["threshold_interval"]
    return (
        "# Site-calibrated model version\n\n"
        f"> **{DISCLAIMER}**\n\n"
        f"- original model (unchanged): `{record['original_model']}`\n"
        f"- calibrated on `{record['data']}`: {record['images']} images of {record['patients']} patients "
        f"({record['normal']} NORMAL, {record['pneumonia']} PNEUMONIA)\n"
        f"- threshold {record['threshold']:.4f} (95 % interval {low:.4f}-{high:.4f}): {record['rule']}\n"
        f"- temperature {record['temperature']:.3f} (was {record['original_temperature']:.3f}); the original threshold "
        f"{record['original_threshold']:.4f} is kept as the operating point `original`\n"
        f"- on the calibration sample itself (optimistic): sensitivity {record['sensitivity']:.3f}, "
        f"specificity {record['specificity']:.3f}\n"
    )
