"""The report's figures as PNG bytes (matplotlib, off-screen Agg backend)."""

from __future__ import annotations

import io

import numpy as np

from pneumoscan.evaluation.intervals import clopper_pearson
from pneumoscan.evaluation.metrics import calibration_bins

# Open markers of different shapes and sizes: points that coincide (the stored threshold is Youden's)
# stay visible one inside the other.
_POINT_STYLE = {"stored": ("o", "tab:red", 13), "youden": ("s", "tab:green", 9),
                "sens95": ("^", "tab:purple", 9), "spec95": ("v", "tab:orange", 9)}
# When the whole curve hugs the top-left corner (AUC 0.99+), an inset shows that corner enlarged.
_ZOOM_WHEN_AUC_ABOVE = 0.95


def _mark(ax, name: str, x: float, y: float, label: str) -> None:
    marker, colour, size = _POINT_STYLE.get(name, ("x", "black", 9))
    ax.plot(x, y, marker, markerfacecolor="none", markeredgecolor=colour, markeredgewidth=2, markersize=size,
            label=label)


def _corner_inset(ax, xs, ys, points: list[tuple[str, float, float]], x_range, y_range):
    """An enlarged view of one corner of the plot, with the same curve and operating points."""
    inset = ax.inset_axes([0.42, 0.32, 0.5, 0.42])
    inset.plot(xs, ys, color="tab:blue")
    for name, x, y in points:
        _mark(inset, name, x, y, name)
    inset.set(xlim=x_range, ylim=y_range)
    inset.tick_params(labelsize=7)
    inset.set_title("enlarged", fontsize=7)
    ax.indicate_inset_zoom(inset, edgecolor="grey")
    return inset


def _figure(width: float = 5.0, height: float = 4.2):
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    # Figure() without pyplot: no global state, no GUI, safe in threads and tests.
    return Figure(figsize=(width, height), dpi=100)


def _png(fig, **margins: float) -> bytes:
    buffer = io.BytesIO()
    # Fixed margins: tight_layout measures every text and costs a quarter of the report's time.
    fig.subplots_adjust(**{"left": 0.13, "right": 0.97, "bottom": 0.12, "top": 0.92, **margins})
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def roc_curve_band(labels: np.ndarray, probs: np.ndarray, weights: np.ndarray | None,
                   grid: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean-free ROC band: the 2.5 and 97.5 percentiles of the resamples' TPR at each FPR of ``grid``."""
    from sklearn.metrics import roc_curve

    if weights is None or len(weights) == 0:
        fpr, tpr, _ = roc_curve(labels, probs)
        curve = np.interp(grid, fpr, tpr)
        return curve, curve, curve
    y = np.asarray(labels, dtype=np.float64)
    order = np.argsort(-np.asarray(probs), kind="mergesort")
    sorted_p = np.asarray(probs)[order]
    ends = np.r_[np.flatnonzero(sorted_p[1:] != sorted_p[:-1]), len(sorted_p) - 1]
    tp = np.cumsum(weights[:, order] * y[order], axis=1)[:, ends]
    fp = np.cumsum(weights[:, order] * (1 - y[order]), axis=1)[:, ends]
    tprs = []
    for tp_row, fp_row in zip(tp, fp, strict=True):
        if tp_row[-1] > 0 and fp_row[-1] > 0:
            tprs.append(np.interp(grid, np.r_[0, fp_row / fp_row[-1]], np.r_[0, tp_row / tp_row[-1]]))
    tprs_arr = np.array(tprs)
    return np.median(tprs_arr, 0), np.quantile(tprs_arr, 0.025, 0), np.quantile(tprs_arr, 0.975, 0)


def roc_plot(labels, probs, points: dict[str, float], weights: np.ndarray | None, auc_text: str) -> bytes:
    """ROC curve with its 95% bootstrap band and the operating points marked."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(labels, probs)
    grid = np.linspace(0, 1, 101)
    _, low, high = roc_curve_band(labels, probs, weights, grid)
    fig = _figure()
    ax = fig.add_subplot()
    ax.fill_between(grid, low, high, color="tab:blue", alpha=0.2, label="95% bootstrap band (patients)")
    ax.plot(fpr, tpr, color="tab:blue", label=f"ROC ({auc_text})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    y = np.asarray(labels)
    marks = []
    for name, threshold in points.items():
        called = np.asarray(probs) >= threshold
        marks.append((name, float(called[y == 0].mean()), float(called[y == 1].mean())))
        _mark(ax, name, marks[-1][1], marks[-1][2], f"{name} (t={threshold:.3f})")
    ax.set(xlabel="1 - specificity (false positive rate)", ylabel="sensitivity (true positive rate)",
           title="ROC curve", xlim=(0, 1), ylim=(0, 1.01))
    if _area(fpr, tpr) > _ZOOM_WHEN_AUC_ABOVE:
        right = max(0.1, min(1.0, 1.5 * max(x for _, x, _ in marks)))
        bottom = min(0.9, max(0.0, min(y for _, _, y in marks) - 0.05))
        _corner_inset(ax, fpr, tpr, marks, (0, right), (bottom, 1.005))
    ax.legend(loc="lower right", fontsize=8)
    return _png(fig)


def _area(x, y) -> float:
    return float(np.sum(np.diff(x) * (np.asarray(y[1:]) + np.asarray(y[:-1])) / 2))


def pr_plot(labels, probs, points: dict[str, float], ap_text: str) -> bytes:
    """Precision-recall curve with the prevalence baseline and the operating points."""
    from sklearn.metrics import precision_recall_curve

    precision, recall, _ = precision_recall_curve(labels, probs)
    fig = _figure()
    ax = fig.add_subplot()
    ax.step(recall, precision, where="post", color="tab:blue", label=f"PR ({ap_text})")
    prevalence = float(np.mean(labels))
    ax.axhline(prevalence, color="grey", linestyle=":", linewidth=1, label=f"prevalence {prevalence:.2f}")
    y = np.asarray(labels)
    marks = []
    for name, threshold in points.items():
        called = np.asarray(probs) >= threshold
        if called.any():
            marks.append((name, float(called[y == 1].mean()), float(y[called].mean())))
            _mark(ax, name, marks[-1][1], marks[-1][2], name)
    ax.set(xlabel="recall (sensitivity)", ylabel="precision (PPV)", title="Precision-recall",
           xlim=(0, 1), ylim=(0, 1.01))
    if marks and -_area(recall, precision) > _ZOOM_WHEN_AUC_ABOVE:  # recall decreases along the curve
        left = max(0.0, min(0.9, min(x for _, x, _ in marks) - 0.05))
        bottom = max(0.0, min(0.9, min(y for _, _, y in marks) - 0.05))
        _corner_inset(ax, recall, precision, marks, (left, 1.005), (bottom, 1.005))
    ax.legend(loc="lower left", fontsize=8)
    return _png(fig)


def reliability_plot(labels, curves: dict[str, np.ndarray], bins: int = 10) -> bytes:
    """Reliability diagram: observed pneumonia rate against mean probability per bin, with each bin's image
    count beside its point and its exact 95 % interval as an error bar (a bin of 2 images can only show 0,
    0.5 or 1), and the counts as a histogram below."""
    fig = _figure(5.0, 5.0)
    ax, hist = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="perfect calibration")
    for (name, probs), colour in zip(curves.items(), ("tab:blue", "tab:orange"), strict=False):
        table = calibration_bins(labels, probs, bins)
        x, rate = np.array(table["mean_probability"]), np.array(table["observed_rate"])
        counts = np.array(table["count"], dtype=int)
        ends = np.array([clopper_pearson(round(r * n), n) for r, n in zip(rate, counts, strict=True)]).reshape(-1, 2)
        ax.errorbar(x, rate, yerr=np.abs(ends.T - rate), fmt="o-", color=colour, capsize=2, linewidth=1,
                    label=f"{name} (bars: exact 95% interval)")
        for xi, yi, n in zip(x, rate, counts, strict=True):
            ax.annotate(f"n={n}", (xi, yi), textcoords="offset points", xytext=(-22 if xi > 0.85 else 4,
                        -10 if yi > 0.5 else 5), fontsize=7, color=colour)
        hist.hist(probs, bins=np.linspace(0, 1, bins + 1), color=colour, alpha=0.5, label=name)
    ax.set(ylabel="observed pneumonia rate", title="Reliability diagram", xlim=(0, 1), ylim=(-0.02, 1.02))
    ax.legend(loc="upper left", fontsize=8)
    hist.set(xlabel="predicted probability of pneumonia", ylabel="images")
    return _png(fig, bottom=0.1, hspace=0.08)


def confusion_plot(counts: dict[str, int], threshold: float) -> bytes:
    """The confusion matrix at ``threshold``: counts and row percentages."""
    matrix = np.array([[counts["tn"], counts["fp"]], [counts["fn"], counts["tp"]]])
    fig = _figure(4.2, 3.8)
    ax = fig.add_subplot()
    ax.imshow(matrix, cmap="Blues")
    rows = matrix.sum(axis=1, keepdims=True)
    for i in range(2):
        for j in range(2):
            share = matrix[i, j] / rows[i, 0] if rows[i, 0] else 0.0
            colour = "white" if matrix[i, j] > matrix.max() / 2 else "black"
            ax.text(j, i, f"{matrix[i, j]}\n{share:.1%}", ha="center", va="center", color=colour, fontsize=11)
    ax.set_xticks([0, 1], ["NORMAL", "PNEUMONIA"])
    ax.set_yticks([0, 1], ["NORMAL", "PNEUMONIA"])
    ax.set(xlabel="predicted", ylabel="true", title=f"Confusion matrix (threshold {threshold:.3f})")
    return _png(fig, left=0.27, bottom=0.14)


def histogram_plot(labels, probs, points: dict[str, float]) -> bytes:
    """Score histograms per true class with the operating thresholds as vertical lines."""
    fig = _figure(5.5, 3.8)
    ax = fig.add_subplot()
    y = np.asarray(labels)
    edges = np.linspace(0, 1, 41)
    ax.hist(np.asarray(probs)[y == 0], bins=edges, alpha=0.6, color="tab:blue", label="NORMAL")
    ax.hist(np.asarray(probs)[y == 1], bins=edges, alpha=0.6, color="tab:red", label="PNEUMONIA")
    for name, threshold in points.items():
        ax.axvline(threshold, color=_POINT_STYLE.get(name, ("x", "black"))[1], linestyle="--", label=name)
    ax.set(xlabel="predicted probability of pneumonia", ylabel="images", title="Scores per true class")
    ax.legend(fontsize=8)
    return _png(fig)


def history_plot(history: dict[str, list[float]], title: str = "", footnote: str = "") -> bytes:
    """Training curves from a run's ``history.csv`` (columns of numbers): losses, and every other per-epoch
    metric in [0, 1]. The run's ``curves.png`` and the report's training curves are this figure."""
    # Counted from 1, as the training log and the run's curves.png count them (Lightning counts from 0).
    epochs = [e + 1 for e in (history.get("epoch") or range(len(next(iter(history.values()), []))))]
    fig = _figure(8.0, 3.6 + (0.3 if title else 0) + (0.3 if footnote else 0))
    loss_ax, other_ax = fig.subplots(1, 2)
    for column, values in history.items():
        # Only losses and [0, 1] metrics share these axes (not the learning rate or wall time).
        if "loss" in column:
            ax = loss_ax
        elif any(key in column for key in ("acc", "auc", "sens", "spec", "f1")):
            ax = other_ax
        else:
            continue
        ax.plot(epochs[: len(values)], values, marker=".", label=column)
    loss_ax.set(xlabel="epoch", title="loss")
    other_ax.set(xlabel="epoch", title="metrics")
    for ax in (loss_ax, other_ax):
        ax.xaxis.get_major_locator().set_params(integer=True)
        if ax.lines:
            ax.legend(fontsize=8)
    margins = {"left": 0.07, "wspace": 0.2, "bottom": 0.14}
    if title:
        fig.suptitle(title)
        margins["top"] = 0.84
    if footnote:
        fig.text(0.5, 0.01, footnote, ha="center", va="bottom", fontsize=6, wrap=True)
        margins["bottom"] = 0.2
    return _png(fig, **margins)
