"""What training prints: a progress bar on a terminal, one line per epoch anywhere else, and none of
Lightning's adverts or notices (a log redirected to a file must be worth reading)."""

from __future__ import annotations

import logging
import sys
from typing import Any

from lightning.pytorch.callbacks import Callback, ModelSummary, TQDMProgressBar

# Lightning's rank-zero notices that say nothing about this run: an advert for a cloud service, the
# hardware lines (the summary says the device) and a note on how it counts batches.
_NOISE = ("litlogger", "💡", "GPU available:", "TPU available:", "HPU available:", "to estimate number of stepping")


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(part in message for part in _NOISE)


def quiet_lightning() -> None:
    """Drop Lightning's adverts and notices (idempotent: the filter is added once)."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNoise) for f in logger.filters):
            logger.addFilter(_DropNoise())


def show_progress_bar(wanted: bool) -> bool:
    """A bar only when asked and stderr is a terminal: in a file every redraw becomes a line."""
    return wanted and sys.stderr.isatty()


# Depth 2: the LightningModule holds the per-image standardisation, which holds the network; at depth 1
# the summary would name only the wrapper.
SUMMARY_DEPTH = 2


def model_summary() -> ModelSummary:
    """The model summary shown with the progress bar, down to the network's own class."""
    return ModelSummary(max_depth=SUMMARY_DEPTH)


class ProgressBar(TQDMProgressBar):
    """Lightning's bar without ``v_num`` (the logger's version, "oard" for ours: meaningless here)."""

    def get_metrics(self, trainer, pl_module) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics


class EpochLine(Callback):
    """One line per epoch on stdout, for logs and scripts (used when there is no progress bar)."""

    KEYS = ("train_loss", "val_loss", "val_auc", "val_acc")

    # Lightning runs validation inside the training epoch: at its end both losses are known.
    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        metrics = trainer.callback_metrics
        shown = "  ".join(f"{k} {float(metrics[k]):.4f}" for k in self.KEYS if k in metrics)
        wall = f"  {float(metrics['wall_s']):.0f} s" if "wall_s" in metrics else ""
        print(f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}  {shown}{wall}", flush=True)


# Below this many validation images of either class, the threshold chosen on them is noted as uncertain.
MIN_VAL_PER_CLASS = 30


def warn_if_small_validation(labels, probabilities, threshold: float, resamples: int = 200,
                             seed: int = 0) -> str | None:
    """A warning (printed, and returned) when the validation split is too small to choose a threshold on,
    with how uncertain the chosen threshold is: the 90 % range of Youden's threshold over bootstrap
    resamples of the validation images. None when the split is big enough."""
    import numpy as np
    from sklearn.metrics import roc_curve

    labels = np.asarray(labels).astype(int).ravel()
    probabilities = np.asarray(probabilities, dtype=np.float64).ravel()
    counts = [int((labels == c).sum()) for c in (0, 1)]
    if min(counts) >= MIN_VAL_PER_CLASS:
        return None
    rng = np.random.default_rng(seed)
    thresholds = []
    for _ in range(resamples):
        pick = rng.integers(0, len(labels), len(labels))
        if len(np.unique(labels[pick])) == 2:  # Youden's threshold of the resample
            fpr, tpr, cuts = roc_curve(labels[pick], probabilities[pick], drop_intermediate=False)
            thresholds.append(float(cuts[1:][int(np.argmax(tpr[1:] - fpr[1:]))]))
    spread = (f"; over {len(thresholds)} bootstrap resamples of these images it ranges from "
              f"{np.quantile(thresholds, 0.05):.3f} to {np.quantile(thresholds, 0.95):.3f} (90 %)"
              if len(thresholds) >= 20 else "")
    message = (f"warning: the validation split has only {counts[0]} NORMAL and {counts[1]} PNEUMONIA images "
               f"(fewer than {MIN_VAL_PER_CLASS} of a class): the threshold {threshold:.3f} chosen on it is "
               f"uncertain{spread}. Use more validation images (--val-fraction, or --split patient) before "
               "trusting the threshold.")
    print(message, file=sys.stderr, flush=True)
    return message
