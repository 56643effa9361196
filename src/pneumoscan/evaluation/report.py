"""Render a :class:`~pneumoscan.evaluation.results.Report` as self-contained HTML and as Markdown.

The HTML embeds its figures as base64 data URIs and links nothing outside itself, so it opens offline
and can be mailed as one file.
"""

from __future__ import annotations

import base64
import html
import json
from typing import Any

from pneumoscan.evaluation.metrics import THRESHOLD_FREE_METRICS, THRESHOLD_METRICS
from pneumoscan.evaluation.results import Figure, Report
from pneumoscan.evaluation.subtype import blocks as subtype_blocks

SUBTYPE_TITLE = "Pneumonia subtype: bacterial or viral"

LABELS: dict[str, str] = {
    "accuracy": "Accuracy", "sensitivity": "Sensitivity (recall)", "specificity": "Specificity",
    "ppv": "PPV (precision)", "npv": "NPV", "f1": "F1", "balanced_accuracy": "Balanced accuracy",
    "roc_auc": "ROC-AUC", "pr_auc": "PR-AUC (average precision)", "brier": "Brier score (lower is better)",
    "log_loss": "Log loss (lower is better)", "ece": "ECE (lower is better)",
}
POINT_LABELS = {"stored": "stored threshold", "youden": "Youden's J", "sens95": "sensitivity 0.95",
                "spec95": "specificity 0.95"}
SPEC95_NOTE = ("Why \"specificity 0.95\" can have the lowest specificity here: it is the lowest threshold that "
               "keeps specificity at 0.95 on validation, so it calls more images pneumonia than the other points, "
               "and a test set that differs from validation can fall below 0.95.")
PLOT_TITLES = {"roc": "ROC curve", "precision_recall": "Precision-recall curve",
               "reliability": "Reliability diagram", "confusion_matrix": "Confusion matrix",
               "score_histograms": "Scores per class", "training_curves": "Training curves of the run"}


def _compact_setup(report: Report) -> list[list[str]]:
    """The few settings a reader needs at a glance; the full record is folded below the table."""
    config, versions = report.config or {}, report.versions or {}
    rows = []
    for model in report.models or []:
        if isinstance(model, dict):
            what = ", ".join(f"{k} {model[k]:.4f}" if isinstance(model[k], float) else f"{k} {model[k]}"
                             for k in ("name", "image_size", "fit", "threshold") if k in model)
            rows.append([f"model {model.get('source', model.get('path', ''))}", what])
    for key in ("split", "bootstrap", "level", "tta", "calibrate", "seed"):
        if key in config:
            rows.append([key, str(config[key])])
    rows.append(["versions", ", ".join(f"{k} {versions[k]}" for k in ("pneumoscan", "torch", "onnxruntime")
                                       if k in versions)])
    rows.append(["git commit", str(report.git_commit or "unknown")])
    return rows


def format_value(entry: Figure | dict[str, Any] | None) -> str:
    """``0.912 [0.887, 0.934]`` for a metric with its interval, ``n/a`` when undefined."""
    if isinstance(entry, dict) or entry is None:
        entry = Figure.from_dict(entry)
    return str(entry)


CONTEXT_METRICS = ("roc_auc", "accuracy", "sensitivity", "specificity")


def _context_rows(report: Report) -> list[list[str]]:
    """This evaluation at the stored threshold, beside the model's in-distribution validation figures and,
    on the official Kermany test images, the published figures (rows of the "In context" table)."""
    context = report.context or {}
    if not context:
        return []

    def cells(row: dict[str, Any]) -> list[str]:
        return [f"{row[m]:.3f}" if isinstance(row.get(m), (int, float)) else "–" for m in CONTEXT_METRICS]

    rows = [["this evaluation, stored threshold",
             *[format_value(report.free(m) if m == "roc_auc" else report.at("stored", m)) for m in CONTEXT_METRICS]]]
    if (own := context.get("in_distribution")) is not None:
        rows.append([f"this model: {own['source']}", *cells(own)])
    rows += [[f"published: {row['source']} (whole official test split, {row['images']} images)", *cells(row)]
             for row in context.get("published", [])]
    return rows


CONTEXT_NOTE = ("Published figures use the whole official test split and other training set-ups; they are "
                "context, not a like-for-like comparison. Validation figures come from the training "
                "distribution (the hospital the model learnt from), not from the data evaluated here.")


def interval_text(report: Report) -> str:
    """How the report's intervals were made, in one sentence."""
    boot = report.bootstrap
    method = boot.get("method")
    how = "; ".join(method.values()) if isinstance(method, dict) else f"{method} bootstrap over patients"
    return (f"{round(boot['level'] * 100)}% intervals: {how}; {boot['resamples']} patient resamples, "
            f"seed {boot['seed']}. No interval leaves out its own estimate.")


def stored_rule_text(report: Report) -> str:
    """How the stored threshold was chosen, as the model records it, and where the other points come from."""
    rule = report.operating_points.get("stored", {}).get("rule", "")
    return (f"The stored threshold: {rule}. The other points come from the model file or the run's validation "
            "data; none was tuned on the split evaluated here.")


def ece_text(report: Report) -> str:
    """The ECE's definition, with this report's number of bins and its plug-in value."""
    bins = int((report.config or {}).get("bins", 10))
    ece = report.free("ece")
    plug = f" (plug-in {ece.plug_in:.3f})" if ece.plug_in is not None else ""
    return (f"Expected calibration error (ECE): the images are put in {bins} equal-width bins of predicted "
            f"probability, [0, {1 / bins:g}), [{1 / bins:g}, {2 / bins:g}), ..., the last closed at 1; ECE = the sum over "
            "bins of (images in the bin / all images) x |observed pneumonia rate - mean predicted probability|. "
            "The plain (plug-in) sum is biased upward, as every bin's sampling noise adds to it even for a perfectly "
            f"calibrated model, so the report gives the bootstrap bias-corrected estimate{plug}: 2 x plug-in - the mean "
            "over the patient resamples, with the basic bootstrap interval. A bin of a few images swings between 0 "
            "and 1: read the counts.")


def ece_rows(report: Report) -> list[list[str]]:
    """One row per non-empty calibration bin: edges, images, mean probability, observed rate, ECE term."""
    table = report.reliability or {}
    if not isinstance(table, dict) or not table.get("count"):
        return []
    width = 1 / int((report.config or {}).get("bins", 10))
    total = sum(table["count"])
    rows = []
    for i, (lower, count) in enumerate(zip(table["lower"], table["count"], strict=True)):
        upper = table["upper"][i] if "upper" in table else lower + width
        mean, rate = table["mean_probability"][i], table["observed_rate"][i]
        rows.append([f"[{lower:.2f}, {upper:.2f}{']' if upper >= 1 else ')'}", str(int(count)), f"{mean:.3f}",
                     f"{rate:.3f}", f"{count / total * abs(rate - mean):.4f}"])
    return rows


ECE_HEADER = ["bin", "images", "mean probability", "observed rate", "term of the ECE (plug-in)"]
SCOPE_HEADER = ["file", "label", "why refused"]
ALL_IMAGES_NOTE = ("The same figures at the stored threshold on every decoded image, the refused ones scored with "
                   "the scope check off (what the model would have said about them):")


def scope_rows(report: Report) -> list[list[str]]:
    """The refused images: file, true label, reason."""
    return [[item["path"], "PNEUMONIA" if item["label"] == 1 else "NORMAL", item["reason"]]
            for item in (report.scope or {}).get("images", [])]


def all_images_text(report: Report) -> str | None:
    """The stored threshold's figures with the refused images scored, or None where none was refused."""
    figures = (report.scope or {}).get("all_images")
    if not figures:
        return None
    shown = ", ".join(f"{LABELS[m]} {format_value(f)} (scored only: {report.at('stored', m)})"
                      for m, f in figures.items())
    return f"{ALL_IMAGES_NOTE} {shown}."


def _summary_line(report: Report) -> str:
    data = report.data
    models = ", ".join(f"{m['name']} ({m['path']})" for m in report.models)
    extra = " + TTA (flip)" if report.tta else ""
    kind = "ensemble of " if report.ensemble else ""
    return (f"{kind}{models}{extra} on split '{data['split']}' of {data['root']}: {data['images']} images, "
            f"{data['patients']} patients ({data['pneumonia']} pneumonia, {data['normal']} normal)")


def render_markdown(report: Report) -> str:
    """A short Markdown summary: disclaimer, data, warnings, metric tables with intervals."""
    points = report.points
    lines = [f"# {report.title}", "", f"> **{report.disclaimer}**", "", _summary_line(report), "",
             f"Created {report.created}. {interval_text(report)}", ""]
    for warning in report.warnings:
        lines.append(f"- **WARNING:** {warning}")
    if report.warnings:
        lines.append("")
    lines += ["## Operating points", "", stored_rule_text(report), "", "| point | threshold | chosen by |",
              "|---|---|---|"]
    for name in points:
        op = report.operating_points[name]
        shown = f"{op['threshold']:.4f}"
        if "threshold_before_calibration" in op:
            shown = f"{op['threshold_before_calibration']:.4f} ({shown} calibrated)"
        lines.append(f"| {POINT_LABELS.get(name, name)} | {shown} | {op['rule']}; {op['source']} |")
    if "spec95" in points:
        lines += ["", SPEC95_NOTE]
    lines += ["", "## Metrics at each operating point", "",
              "| metric | " + " | ".join(POINT_LABELS.get(p, p) for p in points) + " |",
              "|---|" + "---|" * len(points)]
    for metric in THRESHOLD_METRICS:
        cells = [format_value(report.at(p, metric)) for p in points]
        lines.append(f"| {LABELS[metric]} | " + " | ".join(cells) + " |")
    if context := _context_rows(report):
        lines += ["", "## In context", "", "| | " + " | ".join(LABELS[m] for m in CONTEXT_METRICS) + " |",
                  "|---|" + "---|" * len(CONTEXT_METRICS), *("| " + " | ".join(r) + " |" for r in context),
                  "", CONTEXT_NOTE]
    lines += ["", "## Threshold-free metrics", "", "| metric | value |", "|---|---|"]
    for metric in THRESHOLD_FREE_METRICS:
        lines.append(f"| {LABELS[metric]} | {format_value(report.free(metric))} |")
    lines += ["", "## Calibration: ECE", "", ece_text(report), ""]
    if rows := ece_rows(report):
        lines += [_md_row(ECE_HEADER), "|---" * len(ECE_HEADER) + "|", *map(_md_row, rows)]
    if rows := scope_rows(report):
        lines += ["", "## Out of scope", "", f"The metrics are on {report.scope['metrics_on']}.", "", _md_row(SCOPE_HEADER),
                  "|---" * len(SCOPE_HEADER) + "|", *map(_md_row, rows)]
        if text := all_images_text(report):
            lines += ["", text]
    cm = report.confusion_matrix["stored"]
    lines += ["", "## Confusion matrix (stored threshold)", "", "| true \\ predicted | NORMAL | PNEUMONIA |",
              "|---|---|---|", f"| NORMAL | {cm['tn']} | {cm['fp']} |", f"| PNEUMONIA | {cm['fn']} | {cm['tp']} |"]
    if parts := subtype_blocks(report.subtype):
        lines += ["", f"## {SUBTYPE_TITLE}"]
        for part in parts:
            lines += ["", part] if isinstance(part, str) else [
                "", _md_row(part[0]), "|---" * len(part[0]) + "|", *map(_md_row, part[1])]
    if report.calibration:
        cal = report.calibration
        lines += ["", f"## Temperature scaling (T = {cal['temperature']:.3f}, fitted on {cal['fitted_on']})", "",
                  "| metric | before | after |", "|---|---|---|"]
        for metric in cal["before"]:
            lines.append(f"| {LABELS[metric]} | {format_value(cal['before'][metric])} | "
                         f"{format_value(cal['after'][metric])} |")
    lines += ["", f"Data fingerprint {report.data['fingerprint']}; pneumoscan "
              f"{report.versions.get('pneumoscan', '?')}, git {report.git_commit or 'unknown'}.", ""]
    return "\n".join(lines)


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
.disclaimer{background:#fff3cd;border:2px solid #d39e00;padding:.8em 1em;font-weight:600}
.warning{background:#f8d7da;border:1px solid #c82333;padding:.5em 1em;margin:.4em 0}
table{border-collapse:collapse;margin:.5em 0 1.2em}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}
th{background:#f3f3f3}figure{display:inline-block;margin:.5em;vertical-align:top}figure img{max-width:520px}
pre{background:#f7f7f7;padding:.6em;overflow-x:auto;font-size:.85em}.muted{color:#666;font-size:.9em}
"""


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def render_html(report: Report, figures: dict[str, bytes], gallery: dict[str, bytes] | None = None) -> str:
    """One self-contained HTML page: figures inlined as data URIs, no script, no external resource."""
    esc = html.escape
    points = report.points
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{esc(report.title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{esc(report.title)}</h1>",
        f"<p class='disclaimer' id='disclaimer'>{esc(report.disclaimer)}</p>",
        f"<p>{esc(_summary_line(report))}</p>",
        f"<p class='muted'>Created {esc(report.created)}. {esc(interval_text(report))}</p>",
    ]
    parts += [f"<p class='warning'>WARNING: {esc(w)}</p>" for w in report.warnings]
    parts.append(f"<h2>Operating points</h2><p>{esc(stored_rule_text(report))}</p>")
    ops = report.operating_points
    parts.append(_table(["point", "threshold", "rule", "source"], [
        [POINT_LABELS.get(n, n), f"{ops[n]['threshold']:.4f}" + (
            f" (model scale {ops[n]['threshold_before_calibration']:.4f})" if "threshold_before_calibration" in ops[n]
            else ""), ops[n]["rule"], ops[n]["source"]] for n in points]))
    if "spec95" in points:
        parts.append(f"<p class='muted'>{esc(SPEC95_NOTE)}</p>")
    parts.append("<h2>Metrics at each operating point</h2>")
    parts.append(_table(["metric", *[POINT_LABELS.get(p, p) for p in points]], [
        [LABELS[m], *[format_value(report.at(p, m)) for p in points]] for m in THRESHOLD_METRICS]))
    if context := _context_rows(report):
        parts.append("<h2>In context</h2>")
        parts.append(_table(["", *[LABELS[m] for m in CONTEXT_METRICS]], context))
        parts.append(f"<p class='muted'>{esc(CONTEXT_NOTE)}</p>")
    parts.append("<h2>Threshold-free metrics</h2>")
    parts.append(_table(["metric", "value [95% CI]"], [
        [LABELS[m], format_value(report.free(m))] for m in THRESHOLD_FREE_METRICS]))
    parts.append(f"<h2 id='ece'>Calibration: ECE</h2><p>{esc(ece_text(report))}</p>")
    if rows := ece_rows(report):
        parts.append(_table(ECE_HEADER, rows))
    if rows := scope_rows(report):
        parts.append(f"<h2 id='out-of-scope'>Out of scope</h2><p>The metrics are on {esc(report.scope['metrics_on'])}.</p>")
        parts.append(_table(SCOPE_HEADER, rows))
        if text := all_images_text(report):
            parts.append(f"<p>{esc(text)}</p>")
    parts.append("<h2>Confusion matrices</h2>")
    parts.append(_table(["point", "TN", "FP", "FN", "TP"], [
        [POINT_LABELS.get(p, p), *[str(report.confusion_matrix[p][k]) for k in ("tn", "fp", "fn", "tp")]]
        for p in points]))
    if blocks := subtype_blocks(report.subtype):
        parts.append(f"<h2 id='subtype'>{esc(SUBTYPE_TITLE)}</h2>")
        parts += [f"<p>{esc(b)}</p>" if isinstance(b, str) else _table(*b) for b in blocks]
    if report.calibration:
        cal = report.calibration
        parts.append(f"<h2>Temperature scaling</h2><p>T = {cal['temperature']:.3f}, fitted on "
                     f"{esc(cal['fitted_on'])}. Rankings (AUCs) and decisions are unchanged; the thresholds "
                     "above were moved with the probabilities.</p>")
        parts.append(_table(["metric", "before", "after"], [
            [LABELS[m], format_value(cal["before"][m]), format_value(cal["after"][m])] for m in cal["before"]]))
    parts.append("<h2>Figures</h2>")
    for name, png in figures.items():
        title = PLOT_TITLES.get(name, name)
        parts.append(f"<figure>{_img(png, title)}<figcaption>{esc(title)}</figcaption></figure>")
    if gallery:
        parts.append("<h2>Worst errors with Grad-CAM</h2>")
        for name, png in gallery.items():
            parts.append(f"<figure>{_img(png, name)}<figcaption>{esc(name)}</figcaption></figure>")
    data = report.data
    parts.append("<h2>Data</h2>")
    parts.append(_table(["", ""], [
        ["root", data["root"]], ["source", data["source"]], ["split", data["split"]],
        ["images / patients", f"{data['images']} / {data['patients']}"],
        ["pneumonia / normal", f"{data['pneumonia']} / {data['normal']}"],
        ["fingerprint", data["fingerprint"]], ["unreadable (skipped)", str(len(data["unreadable"]))],
        ["out of scope (refused, not in the metrics)", str((report.scope or {}).get("refused", "not checked"))],
        ["validation used", json.dumps(report.validation)],
    ]))
    if data["unreadable"]:
        parts.append("<ul>" + "".join(f"<li>{esc(u['reason'])}</li>" for u in data["unreadable"][:50]) + "</ul>")
    parts += [f"<p class='muted'>{esc(n)}</p>" for n in data["notes"]]
    parts.append("<h2>Models, configuration, versions</h2>")
    parts.append(_table(["", ""], _compact_setup(report)))
    full = {"models": report.models, "config": report.config, "versions": report.versions,
            "git_commit": report.git_commit}
    parts.append("<details><summary>Everything, as recorded in report.json</summary>"
                 f"<pre>{esc(json.dumps(full, indent=2, default=str))}</pre></details>")
    parts.append(f"<p class='disclaimer'>{esc(report.disclaimer)}</p></body></html>")
    return "\n".join(parts)
