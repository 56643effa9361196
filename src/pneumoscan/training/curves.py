"""Per-epoch history from Lightning's CSV log, and the loss / accuracy / AUC curves as one PNG."""

from __future__ import annotations

import csv
from pathlib import Path

from pneumoscan._io import atomic_write
from pneumoscan.provenance import DISCLAIMER

COLUMNS = ("epoch", "wall_s", "lr", "train_loss", "val_loss", "train_acc", "val_acc", "train_auc", "val_auc")


def read_history(metrics_csvs: list[Path]) -> list[dict[str, float]]:
    """One row per epoch (the columns of ``COLUMNS`` that were logged), merged from Lightning's CSV logs.

    ``metrics_csvs`` are in the order they were written (a resumed run adds one); later rows win.
    """
    epochs: dict[int, dict[str, float]] = {}
    for metrics_csv in metrics_csvs:
        _merge(metrics_csv, epochs)
    rows = [epochs[e] for e in sorted(epochs)]
    present = [c for c in COLUMNS if any(c in r for r in rows)]
    return [{c: r.get(c, float("nan")) for c in present} for r in rows]


def _merge(metrics_csv: Path, epochs: dict[int, dict[str, float]]) -> None:
    with open(metrics_csv, newline="") as fh:
        for row in csv.DictReader(fh):
            if not row.get("epoch"):
                continue
            epoch = int(float(row["epoch"]))
            merged = epochs.setdefault(epoch, {"epoch": epoch})
            for key, value in row.items():
                if key in COLUMNS and key != "epoch" and value not in ("", None):
                    merged[key] = float(value)


def plot_curves(history: list[dict[str, float]], path: Path, title: str = "") -> Path:
    """Loss, accuracy and ROC-AUC per epoch for train and validation, written atomically as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [r["epoch"] + 1 for r in history]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, metric, label in zip(axes, ("loss", "acc", "auc"), ("loss (class-weighted BCE)", "accuracy at 0.5", "ROC-AUC"), strict=True):
        for split, style in (("train", "-o"), ("val", "-s")):
            key = f"{split}_{metric}"
            if any(key in r for r in history):
                ax.plot(epochs, [r.get(key, float("nan")) for r in history], style, ms=3, label=split)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.text(0.5, 0.01, DISCLAIMER, ha="center", fontsize=6, wrap=True)
    fig.tight_layout(rect=(0, 0.05, 1, 0.95))
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return path
