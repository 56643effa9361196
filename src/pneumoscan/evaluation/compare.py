"""``pneumoscan compare``: several runs' evaluation reports side by side."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from pneumoscan._io import atomic_write_text
from pneumoscan.errors import ConfigError
from pneumoscan.evaluation.metrics import THRESHOLD_FREE_METRICS, THRESHOLD_METRICS
from pneumoscan.evaluation.report import LABELS
from pneumoscan.evaluation.results import Report
from pneumoscan.provenance import DISCLAIMER
from pneumoscan.runs import REPORT_JSON, find_report


@dataclass
class Comparison:
    """A table: one column per report, one row per metric (metrics at the stored threshold)."""

    reports: list[Path]
    header: list[str]
    rows: list[list[str]]
    notes: list[str]

    def to_text(self) -> str:
        """A fixed-width table for the terminal."""
        table = [self.header, *self.rows]
        widths = [max(len(row[i]) for row in table) for i in range(len(self.header))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in table]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join([*lines, "", *self.notes])

    def to_markdown(self) -> str:
        lines = ["# pneumoscan: runs compared", "", f"> **{DISCLAIMER}**", "",
                 "| " + " | ".join(self.header) + " |", "|" + "---|" * len(self.header)]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        lines += [""] + [f"- {note}" for note in self.notes] + [""]
        return "\n".join(lines)


def compare(paths: list[str | os.PathLike], markdown: str | os.PathLike | None = None) -> Comparison:
    """Read each run's (newest) report and lay their metrics side by side; write Markdown if asked."""
    if not paths:
        raise ConfigError("compare: give at least one run folder or report.json")
    files = [find_report(p) for p in paths]
    reports = []
    for file in files:
        try:
            reports.append(Report.from_dict(json.loads(file.read_text(encoding="utf-8"))))
        except (OSError, json.JSONDecodeError, TypeError, AttributeError) as exc:
            raise ConfigError(f"{file}: not a readable pneumoscan report ({exc})") from None
    names = [_column_name(Path(p), r) for p, r in zip(paths, reports, strict=True)]
    if len(set(names)) < len(names):  # two reports of one run: tell them apart by their folder
        names = [f"{n} ({f.parent.name})" for n, f in zip(names, files, strict=True)]
    rows = [
        ["split", *[f"{r.data['split']} ({r.data['images']} img)" for r in reports]],
        ["stored threshold", *[f"{r.threshold('stored'):.4f}" for r in reports]],
    ]
    rows += [[LABELS[m], *[str(r.at("stored", m)) for r in reports]]
             for m in THRESHOLD_METRICS]
    rows += [[LABELS[m], *[str(r.free(m)) for r in reports]]
             for m in THRESHOLD_FREE_METRICS]
    notes = ["threshold metrics at each run's stored threshold; [95% CI] from a patient bootstrap"]
    if len({r.data["fingerprint"] for r in reports}) > 1:
        notes.append("WARNING: the reports were made on different data (fingerprints differ): not comparable")
    for name, r in zip(names, reports, strict=True):
        notes += [f"{name}: {w}" for w in r.warnings if w.startswith("LEAKAGE")]
    result = Comparison(files, ["metric", *names], rows, notes)
    if markdown:
        atomic_write_text(markdown, result.to_markdown())
    return result


def _column_name(path: Path, report: Report) -> str:
    models = report.models or [{}]
    return models[0].get("run_id") or (path.name if path.name != REPORT_JSON else path.parent.name)
