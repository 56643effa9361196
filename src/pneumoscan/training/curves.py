"""Per-epoch history from Lightning's CSV log, and the run's training curves as one PNG."""

from __future__ import annotations

import csv
from pathlib import Path

from pneumoscan._io import atomic_write_bytes
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
    """Loss and metrics per epoch for train and validation (the report's training-curves figure, with
    ``title`` and the disclaimer), written atomically as a PNG."""
    from pneumoscan.evaluation.plots import history_plot

    columns = {key: [row.get(key, float("nan")) for row in history] for key in (history[0] if history else {})}
    return atomic_write_bytes(path, history_plot(columns, title=title, footnote=DISCLAIMER))
