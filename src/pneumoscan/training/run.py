"""``train(config) -> run folder``: data, model, Lightning Trainer, and everything written around them.

The run folder's layout (``runs/<timestamp>-<model>/``, ``runs/latest`` points at the newest) belongs to
:mod:`pneumoscan.runs`.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

from pneumoscan import runs
from pneumoscan._io import atomic_write_csv, atomic_write_json, ensure_writable_dir
from pneumoscan._memory import keep_freed_memory
from pneumoscan.config_files import load_config, save_config, to_dict
from pneumoscan.errors import ConfigError, ModelFileError
from pneumoscan.evaluation.operating import balanced_class_weights
from pneumoscan.provenance import DISCLAIMER, command_line, git_commit, library_versions
from pneumoscan.training.config import TrainConfig, parse_devices

log = logging.getLogger(__name__)
RUN_ENV = "PNEUMOSCAN_RUN_DIR"  # lets the processes of one multi-process run agree on one folder


def train(config: TrainConfig | None = None, *, resume: str | os.PathLike | None = None,
          callbacks: Sequence[Any] = ()) -> Path:
    """Train a model and return its run folder (see the module docstring for what it holds).

    ``resume`` is a run folder or a checkpoint: training continues from its ``last.ckpt`` with the run's
    own config. ``callbacks`` are extra Lightning callbacks. Raises the project's errors (one line) for an
    unknown model, missing data, or a checkpoint of another architecture.
    """
    # RUN_ENV names this run's folder for the processes it launches; left set, a second train() in the
    # same process (a notebook, the test suite) would write into the first run's folder.
    outer = os.environ.get(RUN_ENV)
    keep_freed_memory()  # each step's activations reuse the last step's memory (see pneumoscan._memory)
    try:
        return _train(config, resume=resume, callbacks=callbacks)
    finally:
        if outer is None:
            os.environ.pop(RUN_ENV, None)
        else:
            os.environ[RUN_ENV] = outer


def run_config(resume: str | os.PathLike) -> TrainConfig:
    """The saved config of a run folder (or of the run a checkpoint belongs to)."""
    run_dir, _ = runs.resume_paths(resume)
    return load_config(TrainConfig, run_dir / runs.CONFIG)


def _train(config: TrainConfig | None, resume: str | os.PathLike | None, callbacks: Sequence[Any]) -> Path:
    import lightning as L

    from pneumoscan.models import build_model, read_meta
    from pneumoscan.training.data import XrayDataModule
    from pneumoscan.training.module import XrayClassifier

    resume_ckpt: Path | None = None
    if resume is not None:
        run_dir, resume_ckpt = runs.resume_paths(resume)
        os.environ[RUN_ENV] = str(run_dir)  # the processes this run launches continue the same folder
        saved = load_config(TrainConfig, run_dir / runs.CONFIG)
        # Only the length of training may change on resume; everything else is the run's own.
        config = saved if config is None else replace(saved, epochs=config.epochs, max_time=config.max_time)
        meta = read_meta(resume_ckpt)
        if meta.name != config.model or meta.image_size != config.image_size:
            raise ModelFileError(f"{resume_ckpt}: a {meta.name!r} checkpoint at {meta.image_size}px cannot resume "
                                 f"a {config.model!r} run at {config.image_size}px (another architecture)")
    config = config or TrainConfig()
    rank_zero = _env_rank() == 0
    L.seed_everything(config.seed, workers=True, verbose=False)  # before the weights are initialised
    network = build_model(config.model, config.image_size, config.members)  # an unknown name fails before any work
    on_gpu = _uses_cuda(config)

    pretrained_report = None
    if config.initial_weights and resume_ckpt is None:
        from pneumoscan.models.pretrained import load_pretrained

        # before the data: a wrong weights file fails in a second, not after minutes of caching
        pretrained_report = load_pretrained(network, config.initial_weights, config.model)
        if rank_zero:
            print(pretrained_report.summary())

    teacher = None
    if config.teacher:
        from pneumoscan.training.distill import load_teacher, same_teacher

        # before the data, as the weights above: a wrong teacher path fails at once
        teacher = load_teacher(config.teacher)
        if resume_ckpt is not None:
            same_teacher(teacher, run_dir / runs.PROVENANCE)
        if rank_zero:
            print(f"{teacher.summary()}, weight {config.distill_weight}")

    if resume_ckpt is None:
        run_dir = _new_run_dir(config)
    # Called here, not only by fit: the module's class weights and the provenance need the data first.
    datamodule = XrayDataModule(config, on_gpu=on_gpu, split_file=run_dir / runs.SPLIT if rank_zero else None,
                                progress=config.progress and rank_zero and sys.stderr.isatty())
    datamodule.prepare_data()
    datamodule.setup("fit")
    data = datamodule.data
    if rank_zero:
        ensure_writable_dir(run_dir / runs.CHECKPOINTS)
    provenance = _provenance(config, data, resume_ckpt)
    if pretrained_report is not None:
        provenance["pretrained"] = {"source": pretrained_report.source, "loaded": len(pretrained_report.loaded),
                                    "adapted": pretrained_report.adapted, "licence": pretrained_report.licence}
    if teacher is not None:
        provenance["teacher"] = {"weight": config.distill_weight, "view": config.distill_view,
                                 "models": teacher.record}
        if config.distill_view == "original":
            from pneumoscan.training.distill import score_images

            datamodule.teacher_scores = score_images(teacher, data.train_images, config.batch_size)
            datamodule.train_set = None
            datamodule.setup("fit")  # the training set again, each image with its teacher's score
            teacher = None  # the training step has nothing left to ask it

    if rank_zero:
        save_config(config, run_dir / runs.CONFIG)
        atomic_write_json(run_dir / runs.PROVENANCE, provenance)
        if pretrained_report is not None:
            atomic_write_json(run_dir / runs.PRETRAINED, pretrained_report.to_dict())
        if data.failures:
            print(f"skipped {len(data.failures)} image(s) that could not be decoded (see provenance.json)")

    use_weights = config.class_weights and config.sampler != "weighted"
    weights = balanced_class_weights(data.train_labels) if use_weights else (1.0, 1.0)
    module = XrayClassifier(network, config, weights, provenance, run_id=run_dir.name, teacher=teacher)
    trainer = _trainer(config, run_dir, on_gpu, list(callbacks), len(data.train_samples))
    with warnings.catch_warnings():
        # On CPU the loaders deliberately use no worker processes (the images are already in RAM).
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*Experiment logs directory.*")
        warnings.filterwarnings("ignore", message=".*overridden `on_after_batch_transfer`.*")
        # Lightning's own deprecation notice about torch's pytree API: nothing a user can act on.
        warnings.filterwarnings("ignore", message=".*LeafSpec.*is deprecated.*")
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume_ckpt, weights_only=True)
    if not trainer.is_global_zero:
        return run_dir
    if trainer.interrupted:
        print(f"training interrupted; continue with: pneumoscan train --resume {run_dir}")
        return run_dir
    _finish(run_dir, config, module, datamodule, provenance)
    runs.point_latest(run_dir)
    return run_dir


# -- run folder ----------------------------------------------------------------------------------------------
def _new_run_dir(config: TrainConfig) -> Path:
    if env := os.environ.get(RUN_ENV):
        return Path(env)
    out = Path(config.out).expanduser()
    name = config.run_name
    if name is None:
        # The processes of one torchrun / SLURM job must agree on a name without talking to each other.
        job = os.environ.get("TORCHELASTIC_RUN_ID") or os.environ.get("SLURM_JOB_ID")
        processes = max(int(os.environ.get("WORLD_SIZE", "1") or 1), int(os.environ.get("SLURM_NTASKS", "1") or 1))
        name = f"{job}-{config.model}" if job and processes > 1 else f"{time.strftime('%Y%m%d-%H%M%S')}-{config.model}"
        base, n = name, 2
        while (out / name).exists() and _env_rank() == 0:
            name, n = f"{base}-{n}", n + 1
    elif (out / name / runs.CONFIG).exists() and _env_rank() == 0:
        raise ConfigError(f"{out / name}: a run of that name exists; continue it with --resume {out / name} "
                          "or choose another --run-name")
    run_dir = (out / name).resolve()
    # Lightning's "ddp" launcher re-runs this command for the other ranks: they must find the same folder.
    os.environ[RUN_ENV] = str(run_dir)
    return run_dir


def _provenance(config: TrainConfig, data: Any, resume: Path | None) -> dict[str, Any]:
    return {
        "model": config.model,
        "config": to_dict(config),
        "versions": library_versions(),
        "git_commit": git_commit(),
        "data_root": str(data.root),
        "data_manifest_sha256": data.manifest_hash(),
        "seed": config.seed,
        "command": command_line(),
        "counts": {
            "train": {"images": len(data.train_samples), "pneumonia": int(data.train_labels.sum()),
                      "patients": len({s.patient_id for s in data.train_samples})},
            "val": {"images": len(data.val_samples), "pneumonia": int(data.val_labels.sum()),
                    "patients": len({s.patient_id for s in data.val_samples})},
        },
        "skipped_images": {"count": len(data.failures), "files": [r for _, r in data.failures][:100]},
        "resumed_from": str(resume) if resume else None,
        "disclaimer": DISCLAIMER,
    }


# -- Lightning -----------------------------------------------------------------------------------------------
def _env_rank() -> int:
    for name in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if name in os.environ:
            try:
                return int(os.environ[name])
            except ValueError:
                continue
    return 0


def _uses_cuda(config: TrainConfig) -> bool:
    return config.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()


def _trainer(config: TrainConfig, run_dir: Path, on_gpu: bool, extra: list[Any], n_train: int):
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from pneumoscan.training.callbacks import AtomicCheckpointIO
    from pneumoscan.training.console import (
        EpochLine,
        ProgressBar,
        model_summary,
        quiet_lightning,
        show_progress_bar,
    )

    mode = "min" if config.monitor == "val_loss" else "max"
    checkpoint = ModelCheckpoint(
        dirpath=run_dir / runs.CHECKPOINTS, filename=Path(runs.BEST_CHECKPOINT).stem, monitor=config.monitor, mode=mode, save_top_k=1,
        save_last=True, enable_version_counter=False, auto_insert_metric_name=False,
    )
    callbacks: list[Any] = [checkpoint, *extra]
    if config.ema > 0:
        from pneumoscan.training.callbacks import weight_ema

        # The averaged weights are the ones validated, checkpointed and saved as the model.
        callbacks.append(weight_ema(config.ema))
    if config.early_stopping > 0:
        callbacks.append(EarlyStopping(monitor=config.monitor, mode=mode, patience=config.early_stopping))
    # Lightning's CSV logger deletes an existing metrics.csv: a resumed run logs beside it (csv-1, ...).
    previous = len(list((run_dir / runs.LOGS).glob("csv*")))
    loggers = [CSVLogger(run_dir / runs.LOGS, name="", version=f"csv-{previous}" if previous else "csv")]
    try:
        loggers.append(TensorBoardLogger(run_dir / runs.LOGS, name="", version="tensorboard", default_hp_metric=False))
    except ModuleNotFoundError:  # tensorboard is a dependency, but a trimmed install should still train
        log.warning("tensorboard is not installed: only CSV logs are written")
    precision = config.precision
    if precision == "auto":
        precision = "16-mixed" if on_gpu else "32-true"
    steps_per_epoch = max(1, -(-n_train // config.batch_size))
    quiet_lightning()
    bar = show_progress_bar(config.progress)
    callbacks += [ProgressBar(), model_summary()] if bar else [EpochLine()]
    return L.Trainer(
        accelerator=config.accelerator, devices=parse_devices(config.devices), num_nodes=config.num_nodes,
        strategy=config.strategy, precision=precision, max_epochs=config.epochs,
        max_time=timedelta(minutes=config.max_time) if config.max_time else None,
        gradient_clip_val=config.grad_clip or None, callbacks=callbacks, logger=loggers,
        log_every_n_steps=min(50, steps_per_epoch), enable_progress_bar=bar,
        enable_model_summary=bar, plugins=[AtomicCheckpointIO()],
        default_root_dir=run_dir, deterministic=False, num_sanity_val_steps=0,
    )


def _log_order(path: Path) -> int:
    suffix = path.parent.name.removeprefix("csv").lstrip("-")
    return int(suffix) if suffix.isdigit() else 0


# -- after training ------------------------------------------------------------------------------------------
def _fit_scope(network: Any, data: Any, config: TrainConfig, provenance: dict[str, Any]) -> dict[str, Any]:
    """The scope gate of the trained network, fitted on its training images (attached to ``network``);
    empty, with a warning in the provenance, when there are too few images or the network has no linear head."""
    from pneumoscan.training.scope_fit import fit_scope_on_pixels

    try:
        return fit_scope_on_pixels(network.eval(), data.train_images, fit=config.fit, seed=config.seed)
    except ConfigError as exc:
        provenance["warnings"] = [*provenance.get("warnings", []), f"no scope gate: {exc}"]
        return {}


def _fit_subtype(network: Any, data: Any, config: TrainConfig, provenance: dict[str, Any]) -> dict[str, Any]:
    """The subtype head of the trained network (attached to ``network``), fitted on the training and
    validation images whose subtype the data state; empty when they state too few, said in the provenance."""
    from pneumoscan.training.subtype_fit import fit_subtype_on_pixels

    try:
        return fit_subtype_on_pixels(network.eval(), data.train_images, [s.subtype for s in data.train_samples],
                                     data.val_images, [s.subtype for s in data.val_samples], seed=config.seed)
    except ConfigError as exc:
        provenance["notes"] = [*provenance.get("notes", []), f"no subtype head: {exc}"]
        return {}


def _finish(run_dir: Path, config: TrainConfig, module: Any, datamodule: Any, provenance: dict[str, Any]) -> None:
    """Best weights -> validation predictions, threshold, model file, history and curves."""
    from pneumoscan.evaluation.operating import apply_temperature
    from pneumoscan.models import save_model
    from pneumoscan.models.artifact import read_checkpoint
    from pneumoscan.training.console import warn_if_small_validation
    from pneumoscan.training.curves import plot_curves, read_history
    from pneumoscan.training.metrics import binary_summary, operating_points, validation_temperature
    from pneumoscan.training.module import validation_probabilities

    data, network = datamodule.data, module.model
    best = runs.checkpoint(run_dir, "best")
    best_epoch = None
    if best.is_file():
        state, _, epoch = read_checkpoint(best)
        network.load_state_dict(state)
        best_epoch = (epoch if epoch is not None else -1) + 1  # counted from 1, as the log and curves.png count
    # else validation never ran (a very short --max-time): keep the weights in memory
    probs = validation_probabilities(module, datamodule)
    labels = data.val_labels
    temperature = 1.0
    if config.temperature_scaling:
        temperature, kept_raw = validation_temperature(labels, probs, balanced=config.class_balanced)
        if kept_raw:
            provenance["warnings"] = [*provenance.get("warnings", []), f"temperature scaling skipped: {kept_raw}"]
        # Everything below (validation predictions, thresholds, metrics) is on the model's own scale.
        probs = apply_temperature(probs, temperature)
    points = operating_points(labels, probs, seed=config.seed)
    threshold = points[config.threshold_rule]
    if config.threshold_rule != "balanced" and (small := warn_if_small_validation(labels, probs, threshold)):
        provenance["warnings"] = [*provenance.get("warnings", []), small.removeprefix("warning: ")]
    metrics = binary_summary(labels, probs, threshold)
    metrics["best_epoch"] = best_epoch if best_epoch is not None else -1
    atomic_write_csv(run_dir / runs.VAL_PREDICTIONS, ["path", "patient_id", "label", "probability"],
                     ([os.path.abspath(s.path), s.patient_id, s.label, f"{float(p):.6f}"]
                      for s, p in zip(data.val_samples, probs, strict=True)))
    # The module states what a model file says about itself; here only what validation chose changes.
    meta = replace(module.meta(), threshold=threshold, operating_points=points, val_metrics=metrics,
                   temperature=temperature, scope=_fit_scope(network, data, config, provenance),
                   subtype=_fit_subtype(network, data, config, provenance))
    save_model(run_dir, network.to(memory_format=torch.contiguous_format), meta)
    history = read_history(sorted((run_dir / runs.LOGS).glob("csv*/metrics.csv"), key=_log_order))
    if history:
        atomic_write_csv(run_dir / runs.HISTORY, list(history[0]), history)
        plot_curves(history, run_dir / runs.CURVES, title=f"{config.model} at {config.image_size}px")
    provenance["val_metrics"] = metrics
    atomic_write_json(run_dir / runs.PROVENANCE, provenance)
    summary = ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if isinstance(v, float))
    print(f"run folder: {run_dir}\nvalidation (best epoch {metrics['best_epoch']}): {summary}")
    if meta.subtype:
        shown = ", ".join(f"{k} {v:.3f}" for k, v in meta.subtype["val_metrics"].items())
        print(f"subtype head, viral vs bacterial (validation pneumonia images): {shown}")
