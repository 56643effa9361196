"""Site calibration: re-fit the operating threshold and a temperature on a small labelled sample of a site.

A model trained at one hospital sees another hospital's radiographs with a shifted score distribution:
its ranking may hold while its threshold and probabilities do not. Real deployments check a model on a
small labelled sample of their own before use; ``calibrate`` turns that sample into a new model version
(the original file is never changed).

The sample is first made trustworthy (:mod:`pneumoscan.evaluation.calibration_sample`: duplicates count
once, out-of-scope and unreadable images are left out and listed, the run's own training or validation
images are refused); the fit counts patients, not images, and is restrained by the model's own
temperature and threshold (:mod:`pneumoscan.evaluation.site_fit`). A model with a subtype head has its
subtype temperature re-fitted only where the sample names the subtype of enough patients of each kind, else
kept, the reason said in the output and the card (:mod:`pneumoscan.evaluation.subtype_site`).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from pneumoscan import bundled
from pneumoscan._io import atomic_write_json, atomic_write_text
from pneumoscan.errors import DatasetError
from pneumoscan.evaluation.operating import apply_temperature
from pneumoscan.evaluation.site_fit import (
    CONFIDENCE,
    MIN_PER_CLASS,
    TEMPERATURE_BOUNDS,
    SiteCalibration,
    fit_site_calibration,
)
from pneumoscan.evaluation.subtype_site import site_subtype, subtype_line


@dataclass
class CalibrationResult:
    """The new model version and what it was calibrated on."""

    folder: Path
    model_file: Path
    calibration: SiteCalibration
    original: Path
    summary: list[str] = field(default_factory=list)  # what it did and why, one line each (summary())


def calibrate(model: str | os.PathLike, data: str | os.PathLike, target_sensitivity: float = 0.95,
              out: str | os.PathLike | None = None, resamples: int = 1000, seed: int = 0) -> CalibrationResult:
    """Write a site-calibrated version of ``model`` (run folder, model file, or ``default`` / ``fast``: a
    bundled model) fitted on ``data``.

    ``data`` is a labelled folder or CSV manifest from the site; every labelled image is used. The new
    version goes to ``out`` (default ``RUN/calibrated/<data name>-<timestamp>/``; for a bundled model
    ``runs/default/calibrated/...``, ``runs/fast/calibrated/...``): ``model.safetensors`` with the new
    threshold, temperature and operating points, ``model.json``, ``calibration.json`` (with the sample's images, which ``evaluate``
    leaves out), a model card and a README. The original file is only read.
    """
    from pneumoscan.data import load_dataset
    from pneumoscan.evaluation.calibration_sample import describe, listed, site_sample
    from pneumoscan.inference import load
    from pneumoscan.inference.model_card import write_model_card
    from pneumoscan.inference.model_files import resolve_model
    from pneumoscan.models import save_model
    from pneumoscan.runs import CALIBRATION_JSON, CALIBRATION_README, calibrated_folder, find_run, split_file

    files = resolve_model(model)  # `default` names the bundled model there
    network, meta = files.load_network("calibrate")  # an ONNX model's PyTorch weights: the new version is one
    source = files.weights
    origin = find_run(source) if bundled.name_of(source) is None else None
    index = load_dataset(data)
    samples = [s for s in index.samples if s.label is not None]
    if not samples:
        raise DatasetError(f"{data}: no labelled images to calibrate on")
    # The scope check as `predict` applies it: an image the model would not score is not fitted on.
    classifier = load(source)
    trusted = site_sample(data, samples, classifier, split_file(origin) if origin else None)
    kept = trusted.samples
    if not kept:
        raise DatasetError(f"{data}: none of the {len(samples)} images can be used "
                           f"({describe(trusted.excluded) or 'none could be decoded'})")
    original_temperature = float(meta.temperature or 1.0)
    # Back to temperature 1: the new temperature replaces the model's own, it does not stack on it.
    raw = apply_temperature(trusted.probabilities, 1.0 / original_temperature)
    labels = np.array([s.label for s in kept], dtype=np.int64)
    patients = np.array([s.patient_id for s in kept], dtype=str)
    left_out = describe(trusted.excluded)
    try:
        fitted = fit_site_calibration(labels, raw, patients, target_sensitivity, resamples, seed,
                                      model_temperature=original_temperature, model_threshold=float(meta.threshold))
    except DatasetError as exc:
        raise DatasetError(f"{data}: {exc}{f'; {left_out}' if left_out else ''}") from None
    if left_out:
        fitted = replace(fitted, notes=[*fitted.notes, f"{left_out} (listed in {CALIBRATION_JSON})"])

    def convert(threshold: float) -> float:
        # The same decision as before, expressed in the new probability space (temperature is monotone).
        return float(apply_temperature(np.array([threshold]), fitted.temperature / original_temperature)[0])

    points = {name: convert(t) for name, t in meta.operating_points.items()}
    points["original"] = fitted.model_threshold
    points["site"] = fitted.threshold
    points["site-estimate"] = fitted.threshold_estimate
    stamp = time.strftime("%Y%m%d-%H%M%S")
    folder = Path(out) if out else calibrated_folder(_calibration_home(source), _name(data), stamp)
    record = {
        **fitted.to_dict(),
        "data": str(Path(data).resolve()),
        "original_model": str(source.resolve()),
        "original_run": str(origin) if origin is not None else None,
        "original_threshold": float(meta.threshold),
        "original_temperature": original_temperature,
        "rule": (f"the model's own threshold unless the sample shows (one-sided {CONFIDENCE:.0%} Clopper-Pearson) "
                 f"that it misses sensitivity {target_sensitivity:g} (then the median over {resamples} "
                 "patient-bootstrap resamples of the threshold interpolated between the classes' scores) or that a "
                 "higher one still reaches it; temperature: maximum a posteriori around the model's own, bounded to "
                 f"[{TEMPERATURE_BOUNDS[0]:g}, {TEMPERATURE_BOUNDS[1]:g}] x it"),
        "unreadable": [row["reason"] for row in trusted.excluded["unreadable"]],
        "excluded": trusted.counts(),  # listed by name in calibration.json only: the model file stays small
        "training_images_checked": trusted.training_checked,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    subtype, subtype_record = site_subtype(meta, classifier, kept)
    if subtype_record is not None:
        record["subtype"] = subtype_record
    record["summary"] = summary(record)  # what the model card and README say
    new_meta = replace(
        meta, threshold=fitted.threshold, temperature=fitted.temperature, operating_points=points, subtype=subtype,
        run_id=f"{meta.run_id}+calibrated-{stamp}", created=record["created"],
        provenance={**meta.provenance, "calibration": record},
    )
    model_file = save_model(folder, network, new_meta)
    sample = [{"path": os.path.abspath(s.path), "patient_id": s.patient_id, "label": int(s.label)} for s in kept]
    atomic_write_json(folder / CALIBRATION_JSON, {**record, "excluded": listed(trusted.excluded), "sample": sample})
    write_model_card(folder, new_meta)
    atomic_write_text(folder / CALIBRATION_README, _readme(record))
    return CalibrationResult(folder, model_file, fitted, source, record["summary"])


def _calibration_home(source: Path) -> Path:
    """Where calibrated versions of ``source`` go: its run folder; ``runs/<name>`` for a bundled model
    (never the installed package)."""
    from pneumoscan.runs import RUNS_DIR, run_folder_of

    name = bundled.name_of(source)
    return Path(RUNS_DIR) / name if name else run_folder_of(source)


def _name(data: str | os.PathLike) -> str:
    path = Path(data).resolve()
    return (path.stem if path.is_file() else path.name) or "site"


def summary(record: dict[str, Any]) -> list[str]:
    """What the calibration did and why, one line each: printed by ``calibrate``, in the README and the card
    (stored in the record as ``summary``)."""
    low, high = record["threshold_interval"]
    kept = record["threshold_source"] == "model"
    source = "the model's own, kept" if kept else "set by the sample"
    lines = [
        f"threshold {record['threshold']:.4f} ({source}): "
        f"{record['threshold_reason']}",
        f"the sample's own estimate for sensitivity {record['target_sensitivity']:g}: {record['threshold_estimate']:.4f} "
        f"(95 % interval {low:.4f}-{high:.4f}){' - not adopted' if kept else ''}",
        f"temperature {record['temperature']:.3f}: {record['temperature_note']}",
        *subtype_line(record.get("subtype")),
        *(f"note: {note}" for note in record.get("notes", [])),
    ]
    return lines


def _readme(record: dict[str, Any]) -> str:
    from pneumoscan.provenance import DISCLAIMER

    return (
        "# Site-calibrated model version\n\n"
        f"> **{DISCLAIMER}**\n\n"
        f"- original model (unchanged): `{record['original_model']}`\n"
        f"- calibrated on `{record['data']}`: {record['images']} images of {record['patients']} patients "
        f"({record['normal']} NORMAL images of {record['normal_patients']} patients, {record['pneumonia']} PNEUMONIA "
        f"of {record['pneumonia_patients']}); each patient weighs the same\n"
        + "".join(f"- {line}\n" for line in summary(record))
        + f"- rule: {record['rule']}\n"
        f"- the original threshold {record['original_threshold']:.4f} (temperature {record['original_temperature']:.3f}) "
        f"is kept as the operating point `original`\n"
        f"- on the calibration sample itself (optimistic): sensitivity {record['sensitivity']:.3f}, "
        f"specificity {record['specificity']:.3f}\n"
        "- `pneumoscan evaluate` of this version leaves the sample's images (listed in `calibration.json`) out\n"
    )


__all__ = ["MIN_PER_CLASS", "CalibrationResult", "SiteCalibration", "calibrate", "fit_site_calibration",
           "summary"]
