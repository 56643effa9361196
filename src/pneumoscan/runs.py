"""The run folder: its file names, and how to find its model, checkpoints, export and reports.

Every stage asks this module rather than spelling a file name itself. A run folder
(``runs/<run-id>/``; ``runs/latest`` points at the newest) holds::

    config.yaml          the resolved TrainConfig: `pneumoscan train --config` reproduces the run
    provenance.json      library versions, git commit, data manifest hash, seed, counts, skipped images
    pretrained.json      which pretrained weights were loaded (only with --pretrained)
    split.csv            path,label,patient_id,split,subtype of every image used (a data manifest)
    checkpoints/         best.ckpt (monitored metric) and last.ckpt (for --resume), weights-only loadable
    logs/csv, logs/tensorboard
    history.csv          one row per epoch: wall seconds, lr, loss / accuracy / AUC for train and val
    curves.png           loss, accuracy and AUC per epoch
    model.safetensors    the best weights with the stored threshold (balanced 0.5 by default) and the operating points chosen on validation
    model.json           the same metadata, for people
    val_predictions.csv  path,patient_id,label,probability of the best weights on validation
    export/              model.onnx, model_card.json, model_card.md (`pneumoscan export`); with --int8 also
                         model.int8.onnx, model_card.int8.json, model_card.int8.md
    reports/<split>-<time>/  report.json, report.html, report.md, plots/, gallery/, predictions.csv and
                         the evaluation's own config.yaml (`pneumoscan evaluate`)
    calibrated/<data>-<time>/  a site-calibrated model version: model.safetensors, model.json,
                         calibration.json, model card, README.md (`pneumoscan calibrate`)

This module imports nothing heavy: the ONNX serving path uses it without torch.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path

from pneumoscan._io import atomic_write_text
from pneumoscan.errors import ConfigError, ModelFileError

CONFIG = "config.yaml"
PROVENANCE = "provenance.json"
PRETRAINED = "pretrained.json"
SPLIT = "split.csv"
MODEL = "model.safetensors"
MODEL_JSON = "model.json"
VAL_PREDICTIONS = "val_predictions.csv"
HISTORY = "history.csv"
CURVES = "curves.png"
CHECKPOINTS = "checkpoints"
BEST_CHECKPOINT = "best.ckpt"
LAST_CHECKPOINT = "last.ckpt"
LOGS = "logs"
EXPORT = "export"
ONNX = "model.onnx"
INT8_SUFFIX = ".int8.onnx"  # an int8 graph beside a float one: model.onnx -> model.int8.onnx
CARD_JSON = "model_card.json"
CARD_MARKDOWN = "model_card.md"
REPORTS = "reports"
REPORT_JSON = "report.json"
REPORT_HTML = "report.html"
REPORT_MARKDOWN = "report.md"
REPORT_PREDICTIONS = "predictions.csv"
PLOTS = "plots"
GALLERY = "gallery"
CALIBRATED = "calibrated"
CALIBRATION_JSON = "calibration.json"
CALIBRATION_README = "README.md"
RUNS_DIR = "runs"  # the default folder of run folders (`train --out`, `models --runs`)
LATEST = "latest"  # a symlink beside the runs; LATEST_FILE where the file system has no links
LATEST_FILE = "LATEST"

# Files that only a run folder holds: a folder with one of them is a run, whatever else it holds.
_RUN_MARKERS = (SPLIT, VAL_PREDICTIONS, CONFIG)


# -- the model ------------------------------------------------------------------------------------------------
def find_model_file(path: str | os.PathLike) -> Path:
    """Resolve a run folder to its model file (``model.safetensors``, else ``export/model.safetensors``);
    pass files through. Raises :class:`ModelFileError` when there is none."""
    path = Path(path).expanduser()
    if path.is_dir():
        for candidate in (path / MODEL, path / EXPORT / MODEL):
            if candidate.is_file():
                return candidate
        raise ModelFileError(f"{path}: no {MODEL} in this folder; is it a pneumoscan run folder?")
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file or run folder")
    return path


def run_folder_of(model_path: str | os.PathLike) -> Path:
    """The run folder a model file belongs to: ``RUN/model.safetensors``, ``RUN/checkpoints/best.ckpt`` and
    ``RUN/export/model.onnx`` all belong to ``RUN``; a folder is its own run."""
    path = Path(model_path).expanduser()
    if path.is_dir():
        return path
    folder = path.parent
    return folder.parent if folder.name in (CHECKPOINTS, EXPORT) else folder


def find_run(model_path: str | os.PathLike) -> Path | None:
    """The run folder of a model path when it really is one (it holds ``split.csv``, ``val_predictions.csv``
    or ``config.yaml``; a site-calibrated version's folder, holding ``calibration.json``, counts as one:
    :func:`split_file` finds its run's split); a folder given directly counts as a run; None for a lone
    model file."""
    path = Path(model_path).expanduser()
    if (version := path if path.is_dir() else path.parent).joinpath(CALIBRATION_JSON).is_file():
        return version.resolve()
    candidates = [path] if path.is_dir() else [path.parent, path.parent.parent]
    for folder in candidates:
        if any((folder / name).is_file() for name in _RUN_MARKERS):
            return folder.resolve()
    return path.resolve() if path.is_dir() else None


def split_file(run: str | os.PathLike) -> Path | None:
    """The run's ``split.csv``; for a site-calibrated version, that of the run it was calibrated from
    (``original_run`` in its ``calibration.json``, else the folder above ``calibrated/``); None if none."""
    run = Path(run)
    if (run / SPLIT).is_file():
        return run / SPLIT
    record = calibration_record(run)
    if record is None:
        return None
    origin = record.get("original_run")
    candidates = [Path(origin)] if isinstance(origin, str) else []
    if run.parent.name == CALIBRATED:
        candidates.append(run.parent.parent)
    for folder in candidates:
        if folder != run and (found := split_file(folder)) is not None:
            return found
    return None


def calibration_record(model_path: str | os.PathLike) -> dict | None:
    """The ``calibration.json`` of a site-calibrated version (its folder or its model file), parsed; None
    when there is none or it cannot be read."""
    path = Path(model_path).expanduser()
    file = (path if path.is_dir() else path.parent) / CALIBRATION_JSON
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# -- the export -----------------------------------------------------------------------------------------------
def export_file(run: str | os.PathLike) -> Path:
    """Where ``pneumoscan export RUN`` writes the ONNX model (it may not exist yet)."""
    return Path(run) / EXPORT / ONNX


def int8_file(onnx: str | os.PathLike) -> Path:
    """The int8 model beside a float ONNX model (``model.onnx`` -> ``model.int8.onnx``; it may not exist)."""
    onnx = Path(onnx)
    return onnx if is_int8_file(onnx) else onnx.with_name(f"{onnx.stem}{INT8_SUFFIX}")


def is_int8_file(onnx: str | os.PathLike) -> bool:
    """Whether an ONNX file's name is that of an int8 model (``*.int8.onnx``)."""
    return Path(onnx).name.lower().endswith(INT8_SUFFIX)


def card_names(onnx: str | os.PathLike) -> tuple[str, str]:
    """The names of the model card (JSON, Markdown) beside an ONNX model: ``model_card.json`` and
    ``model_card.md``; for an int8 model, ``model_card.int8.json`` and ``model_card.int8.md``."""
    if not is_int8_file(onnx):
        return CARD_JSON, CARD_MARKDOWN
    tag = INT8_SUFFIX.removesuffix(".onnx")
    return CARD_JSON.replace(".json", f"{tag}.json"), CARD_MARKDOWN.replace(".md", f"{tag}.md")


# -- training -------------------------------------------------------------------------------------------------
def checkpoint(run: str | os.PathLike, which: str = "best") -> Path:
    """``RUN/checkpoints/best.ckpt`` or ``last.ckpt`` (it may not exist)."""
    return Path(run) / CHECKPOINTS / (BEST_CHECKPOINT if which == "best" else LAST_CHECKPOINT)


def resume_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """(run folder, checkpoint) to continue from: a run folder's ``last.ckpt``, or the checkpoint given.

    Raises :class:`ModelFileError` without a checkpoint and :class:`ConfigError` without the run's config.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        run_dir = path.resolve()
        ckpt = checkpoint(run_dir, "last")
    else:
        ckpt = path.resolve()
        run_dir = run_folder_of(ckpt)
    if not ckpt.is_file():
        raise ModelFileError(f"{ckpt}: no checkpoint to resume from; pass a run folder that has "
                             f"{CHECKPOINTS}/{LAST_CHECKPOINT}, or start a new run")
    if not (run_dir / CONFIG).is_file():
        raise ConfigError(f"{run_dir / CONFIG}: missing; --resume needs the run folder the checkpoint came from")
    return run_dir, ckpt


def point_latest(run_dir: Path) -> None:
    """``<out>/latest`` -> the run (a symlink, replaced atomically; a LATEST text file where links fail)."""
    link = run_dir.parent / LATEST
    tmp = run_dir.parent / f".{LATEST}.{os.getpid()}"
    try:
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(run_dir.name, target_is_directory=True)
        os.replace(tmp, link)
    except OSError:
        tmp.unlink(missing_ok=True)
        atomic_write_text(run_dir.parent / LATEST_FILE, run_dir.name + "\n")


def calibrated_folder(run: Path, data_name: str, stamp: str) -> Path:
    """The default folder of a site-calibrated version of the run's model."""
    return run / CALIBRATED / f"{data_name}-{stamp}"


# -- reports --------------------------------------------------------------------------------------------------
def report_folder(run: Path, split: str, when: datetime, ensemble: bool = False) -> Path:
    """The default folder of a new evaluation report: ``RUN/reports/[ensemble-]<split>-<time>/``."""
    return run / REPORTS / f"{'ensemble-' if ensemble else ''}{split}-{when.strftime('%Y%m%d-%H%M%S')}"


def reports(run: str | os.PathLike) -> list[Path]:
    """The run's ``report.json`` files, newest first (by modification time)."""
    return sorted(Path(run).glob(f"{REPORTS}/*/{REPORT_JSON}"), key=_mtime, reverse=True)


def latest_report(run: str | os.PathLike) -> tuple[Path | None, dict | None]:
    """The newest readable report of a run, parsed: ``(path, report)``, or ``(None, None)``."""
    for path in reports(run):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # a torn or foreign file: try the next one rather than fail the caller
        if isinstance(data, dict):
            return path, data
    return None, None


def find_report(path: str | os.PathLike) -> Path:
    """A ``report.json``, a report folder, or a run folder (its newest report)."""
    path = Path(path).expanduser()
    if path.is_file():
        return path
    if (path / REPORT_JSON).is_file():
        return path / REPORT_JSON
    if found := reports(path):
        return found[0]
    raise ConfigError(f"{path}: no evaluation report; run `pneumoscan evaluate {path} --data ROOT` first")


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
