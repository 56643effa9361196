"""Site calibration: re-fit the operating threshold and a temperature on a small labelled sample of a site.

A model trained at one hospital sees another hospital's radiographs with a shifted score distribution:
its ranking may hold while its threshold and probabilities do not. Real deployments check a model on a
small labelled sample of their own before use; ``calibrate`` turns that sample into a new model version
(the original file is never changed).

A sample of a few dozen images says little, and a good model often separates it perfectly: fitted
without restraint, such a sample asks for a temperature near 0 (every probability 0 or 1) and a
threshold at the highest pneumonia score (the "always NORMAL" model). So the fit is restrained:

- **Temperature**: the maximum a posteriori fit with a log-normal prior centred on the model's own
  temperature, bounded to [0.5, 2] x that temperature. A perfectly separated sample has no maximum
  likelihood (it only says "sharper"), so it keeps the model's own temperature, and says so.
- **Threshold**: the sample's estimate for the target sensitivity is the median over patient-bootstrap
  resamples of a point interpolated between the classes' scores (the middle, in logit space, of the gap
  below the last pneumonia score needed), with its 95 % interval. The model's own threshold is replaced
  only where the sample shows, with one-sided 95 % (Clopper-Pearson) confidence, that it misses the
  target (the threshold is then lowered to the estimate), or that a higher threshold still reaches it
  (raised to the highest such point). Otherwise the sample cannot support a change (too few pneumonia
  images near the boundary) and the model's own threshold is kept, with the reason.
- A sample with fewer than :data:`MIN_PER_CLASS` images of a class is refused.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from pneumoscan._io import atomic_write_json, atomic_write_text
from pneumoscan.errors import DatasetError
from pneumoscan.evaluation import metrics as M
from pneumoscan.evaluation.operating import apply_temperature, logit

MIN_PER_CLASS = 20  # images of each class a sample must hold: below it a threshold is guesswork
TEMPERATURE_BOUNDS = (0.5, 2.0)  # x the model's own temperature
# The prior's standard deviation on log T: the bounds lie two of them away from the model's own.
PRIOR_SIGMA = math.log(2.0) / 2
CONFIDENCE = 0.95  # one-sided, for "the sample shows the threshold misses / still reaches the target"
THRESHOLD_LIMITS = (0.01, 0.99)  # a site threshold outside these is clamped to them


@dataclass(frozen=True)
class SiteCalibration:
    """What was fitted on the site's sample, in the calibrated model's probability space."""

    threshold: float  # the threshold adopted: the model's own (converted) or the sample's
    threshold_source: str  # "model" (kept) or "site" (moved by the sample)
    threshold_reason: str  # why, in one sentence
    threshold_estimate: float  # the sample's own estimate for the target, adopted or not
    threshold_interval: tuple[float, float]  # its 95 % patient-bootstrap interval
    model_threshold: float  # the model's own threshold, in the calibrated probability space
    temperature: float  # applied to the network's raw logit (replaces the model's own temperature)
    model_temperature: float
    temperature_bounds: tuple[float, float]
    temperature_note: str
    separable: bool  # every pneumonia image of the sample scores above every normal one
    target_sensitivity: float
    images: int
    patients: int
    normal: int
    pneumonia: int
    pneumonia_at_model_threshold: int  # sample pneumonia images at or above the model's own threshold
    sensitivity_at_model_threshold: float
    sensitivity_at_model_threshold_interval: tuple[float, float]  # two-sided 90 % (one-sided 95 % each way)
    sensitivity: float  # on the sample, at ``threshold`` (optimistic: the sample chose or checked it)
    specificity: float
    resamples: int
    seed: int
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fit_site_calibration(labels: np.ndarray, raw_probs: np.ndarray, patients: np.ndarray | list[str],
                         target_sensitivity: float = 0.95, resamples: int = 1000, seed: int = 0, *,
                         model_temperature: float = 1.0, model_threshold: float = 0.5) -> SiteCalibration:
    """Fit a temperature and a target-sensitivity threshold on a site's labelled sample, restrained by the
    model's own (see the module's docstring).

    ``raw_probs`` are ``sigmoid(raw logit)`` (temperature 1); ``model_temperature`` and
    ``model_threshold`` are the model file's (its threshold applies to ``sigmoid(raw logit /
    model_temperature)``). Raises :class:`DatasetError` for a sample below :data:`MIN_PER_CLASS` images
    of a class, or one the model ranks backwards.
    """
    labels = np.asarray(labels, dtype=np.int64)
    raw = logit(np.asarray(raw_probs, dtype=np.float64))
    counts = np.bincount(labels, minlength=2)
    if not 0.0 < target_sensitivity < 1.0:
        raise DatasetError(f"--target-sensitivity must be between 0 and 1, not {target_sensitivity}")
    if counts.min() == 0:
        present = "NORMAL" if counts[0] else "PNEUMONIA"
        raise DatasetError(f"the calibration sample holds only {present} images ({int(counts.max())}); calibrate "
                           f"needs both classes, at least {MIN_PER_CLASS} images of each")
    if counts.min() < MIN_PER_CLASS:
        raise DatasetError(f"the calibration sample holds {int(counts[0])} NORMAL and {int(counts[1])} PNEUMONIA "
                           f"images; calibrate needs at least {MIN_PER_CLASS} of each class")
    if not model_temperature > 0:
        raise DatasetError(f"the model's temperature must be positive, not {model_temperature}")
    from sklearn.metrics import roc_auc_score

    auc = float(roc_auc_score(labels, raw))
    if auc <= 0.5:
        raise DatasetError(f"the model ranks this sample no better than chance (ROC-AUC {auc:.3f}): check its "
                           "labels; calibration moves a threshold and a temperature, it cannot fix a ranking")
    separable = bool(raw[labels == 1].min() > raw[labels == 0].max())
    notes = []
    if separable:
        notes.append("the sample is perfectly separated by the model's scores (every PNEUMONIA image above every "
                     "NORMAL one): it shows the model ranks well here, but not where the boundary lies nor how "
                     "sharp the probabilities should be; it is not obeyed")
    temperature, temperature_note = fit_site_temperature(labels, raw, model_temperature, separable)
    scaled = raw / temperature
    own = float(logit(np.array([model_threshold]))[0]) * model_temperature / temperature
    units = np.asarray(patients, dtype=str)
    estimate, interval = smooth_sensitivity_threshold(labels, scaled, target_sensitivity, units, resamples, seed)
    decision = _choose_threshold(labels, scaled, own, estimate, target_sensitivity)
    threshold, source, reason, at_own, at_own_interval = decision
    probs = 1.0 / (1.0 + np.exp(-scaled))
    at = M.threshold_metrics(labels, probs, _sigmoid(threshold))
    n_pos = int(counts[1])
    return SiteCalibration(
        threshold=_sigmoid(threshold), threshold_source=source, threshold_reason=reason,
        threshold_estimate=_sigmoid(estimate), threshold_interval=(_sigmoid(interval[0]), _sigmoid(interval[1])),
        model_threshold=_sigmoid(own), temperature=float(temperature), model_temperature=float(model_temperature),
        temperature_bounds=(TEMPERATURE_BOUNDS[0] * model_temperature, TEMPERATURE_BOUNDS[1] * model_temperature),
        temperature_note=temperature_note, separable=separable, target_sensitivity=float(target_sensitivity),
        images=len(labels), patients=len(set(units.tolist())), normal=int(counts[0]), pneumonia=n_pos,
        pneumonia_at_model_threshold=at_own, sensitivity_at_model_threshold=at_own / n_pos,
        sensitivity_at_model_threshold_interval=at_own_interval,
        sensitivity=float(at["sensitivity"]), specificity=float(at["specificity"]),
        resamples=resamples, seed=seed, notes=notes,
    )


def fit_site_temperature(labels: np.ndarray, raw_logits: np.ndarray, model_temperature: float,
                         separable: bool) -> tuple[float, str]:
    """(temperature, how it was chosen): the maximum a posteriori temperature of ``sigmoid(raw / T)``
    under a log-normal prior centred on ``model_temperature``, within ``TEMPERATURE_BOUNDS`` x it; the
    model's own for a perfectly separated sample (whose likelihood only grows as T falls to 0)."""
    low, high = (b * model_temperature for b in TEMPERATURE_BOUNDS)
    if separable:
        return float(model_temperature), (f"the model's own ({model_temperature:.3f}): a perfectly separated sample "
                                          "has no best temperature (its likelihood grows as the temperature falls to 0)")
    from scipy.optimize import minimize_scalar

    signs = np.where(np.asarray(labels) == 1, 1.0, -1.0)
    centre = math.log(model_temperature)

    def posterior(log_t: float) -> float:
        margins = signs * raw_logits / math.exp(log_t)
        return float(np.logaddexp(0.0, -margins).sum() + (log_t - centre) ** 2 / (2 * PRIOR_SIGMA**2))

    fitted = minimize_scalar(posterior, bounds=(math.log(low), math.log(high)), method="bounded",
                             options={"xatol": 1e-6})
    temperature = float(math.exp(fitted.x))
    edge = " (at its bound)" if min(abs(temperature - low), abs(temperature - high)) < 1e-4 * model_temperature else ""
    return temperature, (f"maximum a posteriori fit on the sample{edge}, prior log-normal around the model's own "
                         f"{model_temperature:.3f} (sd log 2 / 2), bounded to [{low:.3f}, {high:.3f}]")


def smooth_sensitivity_threshold(labels: np.ndarray, scores: np.ndarray, target: float, patients: np.ndarray,
                                 resamples: int, seed: int) -> tuple[float, tuple[float, float]]:
    """The sample's threshold for ``target`` sensitivity, in the logit space of ``scores``, and its 95 % interval.

    In each patient-bootstrap resample, the pneumonia images are counted from the highest score down
    until they cover ``target`` of the resample's pneumonia weight; every threshold between that image's
    score and the next lower score of the resample (either class) has the same sensitivity, and the
    resample's point is the middle of that gap (the score itself when nothing scores lower). The
    estimate is the median of the resamples' points; the interval their 2.5 and 97.5 percentiles.
    """
    labels = np.asarray(labels, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    weights = M.patient_bootstrap_weights(patients, resamples, seed)
    order = np.argsort(-scores, kind="stable")
    labels, scores, weights = labels[order], scores[order], weights[:, order]
    positive = labels == 1
    pos_weight = weights * positive
    total = pos_weight.sum(axis=1)
    usable = (total > 0) & ((weights * ~positive).sum(axis=1) > 0)
    pos_weight, weights, total = pos_weight[usable], weights[usable], total[usable]
    if not len(total):
        raise DatasetError("no bootstrap resample held both classes; a threshold needs both classes")
    covered = np.cumsum(pos_weight, axis=1) / total[:, None]
    # The first image (highest score first) at which the target is covered; only pneumonia images raise it.
    boundary = np.argmax(covered >= target - 1e-12, axis=1)
    present = weights > 0
    rows = np.arange(len(boundary))
    points = np.empty(len(boundary))
    for row, b in zip(rows, boundary, strict=True):
        lower = np.flatnonzero(present[row, b + 1:] & (scores[b + 1:] < scores[b]))
        points[row] = (scores[b] + scores[b + 1 + lower[0]]) / 2 if len(lower) else scores[b]
    low, high = M.percentile_interval(points, 0.95)
    return float(np.median(points)), (low, high)


def _choose_threshold(labels: np.ndarray, scores: np.ndarray, own: float, estimate: float,
                      target: float) -> tuple[float, str, str, int, tuple[float, float]]:
    """(threshold, source, reason, pneumonia at own, sensitivity interval at own), in logit space."""
    from scipy.stats import binomtest

    positives = np.sort(scores[labels == 1])[::-1]
    n = len(positives)
    k = int((positives >= own).sum())
    ci = binomtest(k, n).proportion_ci(confidence_level=2 * CONFIDENCE - 1, method="exact")
    at_own = (float(ci.low), float(ci.high))
    shown = f"{k} of {n} PNEUMONIA images of the sample score at or above it (sensitivity {k / n:.3f}, " \
            f"one-sided {CONFIDENCE:.0%} bounds {ci.low:.3f}-{ci.high:.3f})"
    if ci.high < target:
        threshold = min(estimate, own)
        return (*_clamped(threshold, "site", f"the sample shows the model's own threshold misses sensitivity "
                                             f"{target:g}: {shown}; lowered to the sample's estimate"), k, at_own)
    # Raising gives up pneumonia images: only as far as the sample still shows the target. The one-sided
    # Clopper-Pearson lower bound of j detected of n is the (1 - CONFIDENCE) quantile of Beta(j, n - j + 1).
    from scipy.stats import beta

    counts = np.arange(1, n + 1)
    demonstrable = counts[beta.ppf(1 - CONFIDENCE, counts, n - counts + 1) >= target].tolist()
    if demonstrable and demonstrable[0] < k:
        j = demonstrable[0]
        below = scores[scores < positives[j - 1]]
        point = (positives[j - 1] + below.max()) / 2 if len(below) else positives[j - 1]
        threshold = min(point, estimate)
        if threshold > own:
            return (*_clamped(threshold, "site", f"the sample shows sensitivity {target:g} is still reached above the "
                                                 f"model's own threshold: {j} of {n} PNEUMONIA images at or above "
                                                 "the new one"), k, at_own)
    needed = _needed(target)
    why = (f"the sample cannot support another threshold for sensitivity {target:g} (too few PNEUMONIA images "
           f"near the boundary): {shown}")
    if not demonstrable:
        why += f"; showing it at a higher threshold needs at least {needed} PNEUMONIA images"
    return own, "model", why + "; the model's own threshold is kept", k, at_own


def _clamped(threshold: float, source: str, reason: str) -> tuple[float, str, str]:
    low, high = (float(logit(np.array([t]))[0]) for t in THRESHOLD_LIMITS)
    if threshold < low or threshold > high:
        clamp = low if threshold < low else high
        return clamp, source, reason + (f" (clamped from {_sigmoid(threshold):.4f} to "
                                        f"{_sigmoid(clamp):.2f}: a site threshold stays in {THRESHOLD_LIMITS})")
    return threshold, source, reason


def _needed(target: float) -> int:
    """The fewest pneumonia images that, all detected, show ``target`` with one-sided 95 % confidence."""
    return math.ceil(math.log(1 - CONFIDENCE) / math.log(target))


def _sigmoid(z: float) -> float:
    return float(1.0 / (1.0 + np.exp(-np.float64(z))))


@dataclass
class CalibrationResult:
    """The new model version and what it was calibrated on."""

    folder: Path
    model_file: Path
    calibration: SiteCalibration
    original: Path


def calibrate(model: str | os.PathLike, data: str | os.PathLike, target_sensitivity: float = 0.95,
              out: str | os.PathLike | None = None, resamples: int = 1000, seed: int = 0) -> CalibrationResult:
    """Write a site-calibrated version of ``model`` (run folder, model file, or ``default``: the bundled
    model) fitted on ``data``.

    ``data`` is a labelled folder or CSV manifest from the site; every labelled image is used. The new
    version goes to ``out`` (default ``RUN/calibrated/<data name>-<timestamp>/``; for the bundled model
    ``runs/default/calibrated/...``): ``model.safetensors`` with the new threshold, temperature and
    operating points, ``model.json``, ``calibration.json`` (with the sample's images, which ``evaluate``
    leaves out), a model card and a README. The original file is only read.
    """
    from pneumoscan.data import build_cache, load_dataset
    from pneumoscan.inference.model_files import resolve_model
    from pneumoscan.models import save_model
    from pneumoscan.runs import CALIBRATION_JSON, CALIBRATION_README, calibrated_folder, find_run
    from pneumoscan.serving.model_card import write_model_card

    files = resolve_model(None if _is_default(model) else model)
    network, meta = files.load_network("calibrate")  # an ONNX model's PyTorch weights: the new version is one
    source = files.weights
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
    original_temperature = float(meta.temperature or 1.0)
    # Back to temperature 1: the new temperature replaces the model's own, it does not stack on it.
    raw = apply_temperature(scored, 1.0 / original_temperature)
    labels = np.array([s.label for s in kept], dtype=np.int64)
    patients = np.array([s.patient_id for s in kept], dtype=str)
    try:
        fitted = fit_site_calibration(labels, raw, patients, target_sensitivity, resamples, seed,
                                      model_temperature=original_temperature, model_threshold=float(meta.threshold))
    except DatasetError as exc:
        raise DatasetError(f"{data}: {exc}") from None

    def convert(threshold: float) -> float:
        # The same decision as before, expressed in the new probability space (temperature is monotone).
        return float(apply_temperature(np.array([threshold]), fitted.temperature / original_temperature)[0])

    points = {name: convert(t) for name, t in meta.operating_points.items()}
    points["original"] = fitted.model_threshold
    points["site"] = fitted.threshold
    points["site-estimate"] = fitted.threshold_estimate
    stamp = time.strftime("%Y%m%d-%H%M%S")
    folder = Path(out) if out else calibrated_folder(_calibration_home(source), _name(data), stamp)
    origin = find_run(source) if not _is_bundled(source) else None
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
        "unreadable": [r for _, r in cache.failures],
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    record["summary"] = summary(record)  # what the model card and README say
    new_meta = replace(
        meta, threshold=fitted.threshold, temperature=fitted.temperature, operating_points=points,
        run_id=f"{meta.run_id}+calibrated-{stamp}", created=record["created"],
        provenance={**meta.provenance, "calibration": record},
    )
    model_file = save_model(folder, network, new_meta)
    sample = [{"path": os.path.abspath(s.path), "patient_id": s.patient_id, "label": int(s.label)} for s in kept]
    atomic_write_json(folder / CALIBRATION_JSON, {**record, "sample": sample})
    write_model_card(folder, new_meta)
    atomic_write_text(folder / CALIBRATION_README, _readme(record))
    return CalibrationResult(folder, model_file, fitted, source)


def _is_default(model: str | os.PathLike) -> bool:
    """``default`` (when no such path exists) names the bundled model."""
    from pneumoscan.bundled import NAME

    return str(model) == NAME and not Path(model).exists()


def _is_bundled(source: Path) -> bool:
    from pneumoscan.bundled import BUNDLED_DIR

    return source.resolve().parent == BUNDLED_DIR


def _calibration_home(source: Path) -> Path:
    """Where calibrated versions of ``source`` go: its run folder; ``runs/default`` for the bundled model
    (never the installed package)."""
    from pneumoscan.bundled import NAME
    from pneumoscan.runs import RUNS_DIR, run_folder_of

    return Path(RUNS_DIR) / NAME if _is_bundled(source) else run_folder_of(source)


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
        f"({record['normal']} NORMAL, {record['pneumonia']} PNEUMONIA)\n"
        + "".join(f"- {line}\n" for line in summary(record))
        + f"- rule: {record['rule']}\n"
        f"- the original threshold {record['original_threshold']:.4f} (temperature {record['original_temperature']:.3f}) "
        f"is kept as the operating point `original`\n"
        f"- on the calibration sample itself (optimistic): sensitivity {record['sensitivity']:.3f}, "
        f"specificity {record['specificity']:.3f}\n"
        "- `pneumoscan evaluate` of this version leaves the sample's images (listed in `calibration.json`) out\n"
    )
