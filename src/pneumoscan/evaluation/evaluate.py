"""``evaluate(config)``: score a split with one model (or an ensemble), then write the report.

The order of work is fixed so that nothing is tuned on the evaluated split: thresholds and the
temperature come from the model file or from the run's validation data, and are frozen before the
evaluated images are scored.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from pneumoscan._io import (
    atomic_write_bytes,
    atomic_write_csv,
    atomic_write_json,
    atomic_write_text,
    ensure_writable_dir,
)
from pneumoscan.config_files import save_config, to_dict
from pneumoscan.errors import ConfigError, DatasetError
from pneumoscan.evaluation import intervals as I
from pneumoscan.evaluation import metrics as M
from pneumoscan.evaluation.cautions import leakage, report_warnings
from pneumoscan.evaluation.config import EvaluateConfig
from pneumoscan.evaluation.context import report_context
from pneumoscan.evaluation.figures import report_figures
from pneumoscan.evaluation.gallery import gallery as error_gallery
from pneumoscan.evaluation.operating import apply_temperature, fit_temperature
from pneumoscan.evaluation.refused import out_of_scope, scope_record
from pneumoscan.evaluation.results import Figure, Metrics, Report
from pneumoscan.evaluation.scoring import (
    Member,
    operating_points,
    point_rules,
    run_split,
    scores,
    validation_scores,
)
from pneumoscan.evaluation.subtype import subtype_section
from pneumoscan.provenance import DISCLAIMER, git_commit, library_versions
from pneumoscan.runs import (
    CONFIG,
    PLOTS,
    REPORT_HTML,
    REPORT_JSON,
    REPORT_MARKDOWN,
    REPORT_PREDICTIONS,
    SPLIT,
    VAL_PREDICTIONS,
    calibration_record,
    find_run,
    report_folder,
    split_file,
)

__all__ = ["EvaluateConfig", "EvaluationResult", "evaluate"]


def left_out_text(left_out: dict[str, Any]) -> str:
    """One sentence: the images of a calibrated version's sample that ``evaluate`` left out."""
    images, kin = left_out["images"], left_out["patient_images"]
    return (f"{images} image{'s' * (images != 1)} of the calibration sample and {kin} other image{'s' * (kin != 1)} "
            "of its patients were left out: the calibrated version chose its threshold and temperature on them")


@dataclass
class EvaluationResult:
    """Where the report went, and its content (``report.to_dict()`` is ``report.json``)."""

    folder: Path
    report: Report

    @property
    def html(self) -> Path:
        return self.folder / REPORT_HTML

    @property
    def json(self) -> Path:
        return self.folder / REPORT_JSON

    @property
    def markdown(self) -> Path:
        return self.folder / REPORT_MARKDOWN


def evaluate(config: EvaluateConfig) -> EvaluationResult:
    """Evaluate ``config.models`` on ``config.split`` of ``config.data`` and write HTML, JSON and Markdown.

    Promises: the model files are only read (their threshold is never changed); operating points and
    the temperature come from the model file or the run's validation data, never from the evaluated
    split; images that cannot be decoded are skipped and listed in the report; images the scope gate
    refuses (as ``predict`` does) are counted, named and kept out of the metrics.
    """
    from pneumoscan.inference import load

    if not config.models:
        raise ConfigError("evaluate: give at least one run folder or model file")
    if config.bootstrap < 1:
        raise ConfigError(f"--bootstrap must be at least 1, not {config.bootstrap}")
    if not 0 < config.level < 1:
        raise ConfigError(f"--level must be between 0 and 1, not {config.level}")
    loaded = [(m, load(m, device=config.device)) for m in config.models]
    # The bundled model (`default`) is no run: its reports go to its own folder, runs/default.
    members = [Member(Path(m), c.files.run_folder if c.files.bundled else find_run(m), c) for m, c in loaded]
    metas = [m.classifier.meta for m in members]
    if len({(meta.image_size, meta.fit) for meta in metas}) > 1:
        raise ConfigError("ensemble members differ in image size or fit; evaluate them separately "
                          f"({', '.join(f'{m.source}: {x.image_size}px {x.fit}' for m, x in zip(members, metas, strict=True))})")
    started = datetime.now(UTC)
    clock = _Clock()
    out = Path(config.out) if config.out else _default_out(members, config.split, started)
    created = not out.exists()
    ensure_writable_dir(out)
    try:
        return _evaluate(config, members, metas, out, started, clock)
    except BaseException:
        if created:  # a failed evaluation leaves no half-written report folder behind
            shutil.rmtree(out, ignore_errors=True)
        raise


def _evaluate(config: EvaluateConfig, members: list[Member], metas: list, out: Path, started: datetime,
              clock: _Clock) -> EvaluationResult:
    from pneumoscan.data import build_cache, default_data_root, load_dataset

    size, fit = metas[0].image_size, metas[0].fit
    # 1. The data to evaluate.
    data_root = Path(config.data) if config.data else _default_data(members, config.split, default_data_root)
    index = load_dataset(data_root)
    samples, data_notes = _select(index, config.split)
    samples, left_out = _without_calibration_sample(members, metas, samples, data_root)
    if left_out and left_out["checked"]:
        data_notes.append(left_out_text(left_out))
    cache = build_cache(samples, size, fit, progress=False)
    images, kept = cache.subset(None)
    if len(kept) == 0:
        raise DatasetError(f"{data_root}: none of the {len(samples)} images of split {config.split!r} could be decoded")

    # 2. Everything chosen on validation, frozen before the evaluated images are scored.
    clock.lap("load")
    validation = validation_scores(members, config, size, fit)
    points, points_source, stored = operating_points(members, metas, validation, config)
    temperature = None
    if config.calibrate:
        if validation is None:
            raise ConfigError(f"{members[0].source}: --calibrate needs the run's validation predictions "
                              f"({VAL_PREDICTIONS} or {SPLIT} in the run folder)")
        temperature = fit_temperature(validation["labels"], validation["probs"])

    # 3. Score the evaluated split. The images predict refuses as out of scope get no probability there, so
    # the metrics are those of the scored images; the refused ones are named, and scored apart (scope_record).
    clock.lap("validation")
    raw_all, viral_all = scores(members, images, config)
    refused = out_of_scope(members, images, kept, config.batch_size)
    clock.lap("infer")
    thresholds = {"stored": stored, **points}
    uncalibrated = dict(thresholds)
    if temperature:
        # Same decisions as before scaling: the thresholds move with the probabilities (monotone map).
        thresholds = {k: float(apply_temperature(np.array([t]), temperature)[0]) for k, t in thresholds.items()}
    everything = scope_record(members, kept, refused, raw_all, temperature, thresholds["stored"], config)
    probs_all = apply_temperature(raw_all, temperature) if temperature else raw_all
    # Before the refused images are dropped: the subtype's confusion matrix counts them as refused.
    subtype = subtype_section(members, viral_all, kept, refused, probs_all, thresholds["stored"], config)
    scored = np.array([i not in refused for i in range(len(kept))], dtype=bool)
    if not scored.any():
        raise DatasetError(f"{data_root}: all {len(kept)} decoded images of split {config.split!r} are out of the "
                           f"model's scope (first: {kept[0].path}: {refused[0]})")
    images, kept, raw = images[scored], [s for s, keep in zip(kept, scored, strict=True) if keep], raw_all[scored]
    labels = np.array([s.label for s in kept], dtype=np.int64)
    patients = np.array([s.patient_id for s in kept], dtype=str)
    probs = probs_all[scored]

    # 4. Metrics with their intervals (patient bootstrap; exact for proportions; ECE bias-corrected).
    weights = M.patient_bootstrap_weights(patients, config.bootstrap, config.seed)
    found = I.estimates(labels, probs, thresholds, weights, config.level, config.bins)
    clock.lap("bootstrap")
    rules = point_rules(members, metas)
    report = Report(
        disclaimer=DISCLAIMER,
        created=started.isoformat(timespec="seconds"),
        metrics=Metrics(
            threshold_free={m: Figure.of(e) for m, e in found["threshold_free"].items()},
            at={name: {m: Figure.of(e) for m, e in row.items()} for name, row in found["at"].items()},
        ),
        confusion_matrix={name: M.confusion(labels, probs, t) for name, t in thresholds.items()},
        operating_points={
            name: {"threshold": thresholds[name], "source": points_source if name != "stored" else
                   ("model file" if len(members) == 1 else "mean of the ensemble members' stored thresholds"),
                   "rule": rules.get(name, ""),
                   **({"threshold_before_calibration": uncalibrated[name]} if temperature else {})}
            for name in thresholds
        },
        bootstrap={"resamples": config.bootstrap, "seed": config.seed, "level": config.level,
                   "unit": "patient", "method": I.METHODS, "undefined_resamples": found["undefined"]},
        scope=everything,
        subtype=subtype,
        calibration=_calibration(labels, raw, found["threshold_free"], temperature, weights, config)
        if temperature else None,
        site_calibration=_site_calibration(metas[0], labels, probs, config) if len(members) == 1 else None,
        reliability=M.calibration_bins(labels, probs, config.bins),
        models=[_describe_member(m) for m in members],
        ensemble=len(members) > 1,
        tta="horizontal flip, mean probability" if config.tta else None,
        data={**_describe_data(index, config.split, kept, cache.failures, data_notes, labels, patients),
              **({"calibration_sample": left_out} if left_out else {})},
        validation=None if validation is None else {
            "source": validation["source"], "images": len(validation["labels"]),
            "patients": len(set(validation["patients"])),
        },
        context=report_context(metas, [s.path for s in kept], config.split, data_root),
        leakage=leakage(members, kept),
        config=to_dict(config),
        versions=library_versions(),
        git_commit=git_commit(),
    )
    report.warnings = report_warnings(report)

    # 5. Figures, per-image predictions, report files.
    figures = report_figures(members[0].run_dir, labels, probs, raw, thresholds, weights, report, config.bins)
    clock.lap("plots")
    for name, png in figures.items():
        atomic_write_bytes(out / PLOTS / f"{name}.png", png)
        report.plots[name] = f"{PLOTS}/{name}.png"
    _write_predictions(out / REPORT_PREDICTIONS, kept, labels, raw, probs, thresholds["stored"])
    gallery = error_gallery(members[0], images, kept, probs, labels, thresholds["stored"], config.gallery)
    clock.lap("gallery")
    report.gallery = [{k: v for k, v in item.items() if k != "png"} for item in gallery] if gallery else None
    for item in gallery or []:
        atomic_write_bytes(out / item["image"], item["png"])
    from pneumoscan.evaluation.report import render_html, render_markdown

    clock.lap("report")  # the JSON states the timings up to here; writing the files is the rest
    report.timings_s = clock.laps
    save_config(config, out / CONFIG)  # a report's own config, not a run's
    atomic_write_json(out / REPORT_JSON, report.to_dict())
    atomic_write_text(out / REPORT_MARKDOWN, render_markdown(report))
    atomic_write_text(out / REPORT_HTML, render_html(
        report, figures, {item["caption"]: item["png"] for item in gallery or []}))
    return EvaluationResult(out, report)


class _Clock:
    """Seconds per phase, stored in the report (and printed by bench/bench_evaluate.py)."""

    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self.last, 4)
        self.last = now


def _default_data(members: list[Member], split: str, fallback) -> Path:
    """The first run's ``split.csv`` when it holds ``split`` (e.g. its held-out test patients), else the default data.

    Training holds out a patient-level test split when the data has none, so ``evaluate RUN`` alone
    gives an estimate on patients that neither training nor model selection saw.
    """
    trained = run_split(members[0])
    if trained is not None and (split == "all" or any(s.split == split for s in trained)):
        return split_file(members[0].run_dir)
    return fallback()


def _without_calibration_sample(members: list[Member], metas: list, samples: list,
                                data_root: Path) -> tuple[list, dict[str, Any] | None]:
    """The evaluated samples less the images of a site-calibrated model's calibration sample and the
    other images of its patients (its threshold was chosen on them), and what was left out.

    Raises :class:`DatasetError` when nothing else is left.
    """
    if len(members) != 1 or not isinstance((metas[0].provenance or {}).get("calibration"), dict):
        return samples, None
    record = calibration_record(members[0].source)
    sample = record.get("sample") if record else None
    if not isinstance(sample, list):
        return samples, {"images": 0, "patient_images": 0, "checked": False}
    paths = {str(item.get("path")) for item in sample if isinstance(item, dict)}
    patients = {str(item.get("patient_id")) for item in sample if isinstance(item, dict)}
    own = [s for s in samples if os.path.abspath(s.path) in paths]
    kin = [s for s in samples if os.path.abspath(s.path) not in paths and s.patient_id in patients]
    rest = [s for s in samples if os.path.abspath(s.path) not in paths and s.patient_id not in patients]
    if not rest:
        raise DatasetError(f"{data_root}: all {len(samples)} images are of the calibration sample of "
                           f"{members[0].source} or its patients; evaluate it on other images of the site")
    return rest, {"images": len(own), "patient_images": len(kin), "checked": True}


def _default_out(members: list[Member], split: str, when: datetime) -> Path:
    base = members[0].run_dir or members[0].source.expanduser().resolve().parent
    return report_folder(base, split, when, ensemble=len(members) > 1)


def _select(index, split: str) -> tuple[list, list[str]]:
    notes: list[str] = []
    present = [s for s in index.splits if s is not None]
    if split == "all":
        chosen = list(index.samples)
    elif not present:
        chosen = list(index.samples)
        notes.append(f"the data has no split folders or column: all {len(chosen)} images were evaluated")
    elif split in present:
        chosen = index.by_split(split)
    else:
        raise DatasetError(f"{index.root}: no {split!r} split; it has {', '.join(present)} "
                           "(pass --split with one of those, or --split all)")
    labelled = [s for s in chosen if s.label is not None]
    if len(labelled) < len(chosen):
        notes.append(f"{len(chosen) - len(labelled)} images without a label were left out")
    if not labelled:
        raise DatasetError(f"{index.root}: split {split!r} has no labelled images to evaluate")
    return labelled, notes


def _calibration(labels, raw, after, temperature, weights, config) -> dict[str, Any]:
    """The threshold-free figures before the temperature beside ``after`` (the report's own, with it)."""
    before = I.estimates(labels, raw, {}, weights, config.level, config.bins)["threshold_free"]
    return {
        "temperature": temperature,
        "fitted_on": "the run's validation predictions",
        "before": {m: Figure.of(before[m]) for m in M.CALIBRATION_METRICS},
        "after": {m: Figure.of(after[m]) for m in M.CALIBRATION_METRICS},
    }


def _site_calibration(meta, labels, probs, config) -> dict[str, Any] | None:
    """For a site-calibrated model: what it was calibrated on, and the ECE of both versions here."""
    record = (meta.provenance or {}).get("calibration")
    if not isinstance(record, dict):
        return None
    before = float(record.get("original_temperature", 1.0)) or 1.0
    after = float(meta.temperature or 1.0)
    original = apply_temperature(probs, before / after)  # the original version's probabilities
    return {
        "data": record.get("data"), "images": record.get("images"), "rule": record.get("rule"),
        "threshold_interval": record.get("threshold_interval"),
        **{k: record.get(k) for k in ("threshold_source", "threshold_reason", "threshold_estimate", "separable",
                                      "temperature_note") if k in record},
        "ece": {"calibrated": M.expected_calibration_error(labels, probs, config.bins),
                "original": M.expected_calibration_error(labels, original, config.bins)},
    }


def _describe_member(member: Member) -> dict[str, Any]:
    meta = member.classifier.meta
    return {"path": str(member.source), "run_dir": str(member.run_dir) if member.run_dir else None,
            "name": meta.name, "run_id": meta.run_id, "version": meta.version, "image_size": meta.image_size,
            "fit": meta.fit, "threshold": meta.threshold, "operating_points": dict(meta.operating_points),
            "temperature": meta.temperature, "val_metrics": dict(meta.val_metrics),
            "provenance": meta.provenance}


def _describe_data(index, split, kept, failures, notes, labels, patients) -> dict[str, Any]:
    digest = hashlib.sha256()
    for s in kept:
        digest.update(f"{os.path.abspath(s.path)}|{s.label}|{s.patient_id}\n".encode("utf-8", "surrogateescape"))
    return {
        "root": str(index.root), "source": index.source, "split": split,
        "images": len(kept), "patients": len(set(patients.tolist())),
        "pneumonia": int((labels == 1).sum()), "normal": int((labels == 0).sum()),
        "fingerprint": digest.hexdigest()[:16],
        "unreadable": [{"path": p, "reason": r} for p, r in failures],
        "notes": [*index.notes, *notes],
    }


def _write_predictions(path: Path, kept, labels, raw, probs, threshold: float) -> None:
    atomic_write_csv(path, ["path", "patient_id", "label", "probability", "calibrated_probability", "predicted"],
                     ([str(s.path), s.patient_id, int(y), f"{r:.6f}", f"{p:.6f}", int(p >= threshold)]
                      for s, y, r, p in zip(kept, labels, raw, probs, strict=True)))


