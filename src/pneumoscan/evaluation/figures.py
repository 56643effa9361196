"""The figures of an evaluation report, drawn by :mod:`~pneumoscan.evaluation.plots`."""

from __future__ import annotations

from pathlib import Path

from pneumoscan.evaluation import plots
from pneumoscan.evaluation.results import Report
from pneumoscan.evaluation.scoring import read_csv
from pneumoscan.runs import CURVES, HISTORY


def report_figures(run_dir: Path | None, labels, probs, raw, thresholds, weights, report: Report,
                   bins: int) -> dict[str, bytes]:
    """The report's PNG figures by name: ROC, precision-recall, reliability, confusion matrix, score
    histograms, and the run's training curves when its folder has them."""

    def fmt(metric: str) -> str:
        return f"{metric.upper().replace('_', '-')} {report.free(metric)}"

    figures: dict[str, bytes] = {}
    both = bool((labels == 1).any() and (labels == 0).any())
    if both:
        figures["roc"] = plots.roc_plot(labels, probs, thresholds, weights, fmt("roc_auc"))
        figures["precision_recall"] = plots.pr_plot(labels, probs, thresholds, fmt("pr_auc"))
    curves = {"after temperature scaling": probs, "before": raw} if report.calibration else {"model": probs}
    figures["reliability"] = plots.reliability_plot(labels, dict(reversed(curves.items())), bins)
    figures["confusion_matrix"] = plots.confusion_plot(report.confusion_matrix["stored"], thresholds["stored"])
    figures["score_histograms"] = plots.histogram_plot(labels, probs, thresholds)
    history = training_history(run_dir)
    if history:
        figures["training_curves"] = plots.history_plot(history)
    elif run_dir and (run_dir / CURVES).is_file():
        figures["training_curves"] = (run_dir / CURVES).read_bytes()
    return figures


def training_history(run_dir: Path | None) -> dict[str, list[float]]:
    """The run's ``history.csv`` as columns of numbers; {} without one."""
    if run_dir is None or not (run_dir / HISTORY).is_file():
        return {}
    rows = read_csv(run_dir / HISTORY)
    columns: dict[str, list[float]] = {}
    for row in rows:
        for key, value in row.items():
            try:
                columns.setdefault(key, []).append(float(value) if value not in (None, "") else float("nan"))
            except ValueError:
                continue  # a text column (e.g. a timestamp) is not a curve
    return columns
