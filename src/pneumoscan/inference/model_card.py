"""The model card written beside a model's files (by ``export``, ``calibrate`` and the bundled model's build;
read back as ``Classifier.card``): what the model is for, what it was trained and measured on, how to feed
it, and what it must not be used for. JSON for tools, Markdown for people.

Figures come from the model's own metadata (validation metrics, threshold, operating points) and, when
the run has been evaluated, from the newest ``RUN/reports/*/report.json`` (read defensively: a missing or
unfamiliar report leaves the card without test figures, and says so).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pneumoscan._io import atomic_write_json, atomic_write_text
from pneumoscan.inference import onnx_backend
from pneumoscan.inference.onnx_backend import SCOPE_OUTPUT, input_contract, output_contract
from pneumoscan.inference.subtype_card import OUT_OF_SCOPE_WITH_HEAD, subtype_card, subtype_markdown
from pneumoscan.models.artifact import OPERATING_POINTS, ModelMeta
from pneumoscan.models.scope_meta import describe
from pneumoscan.provenance import DISCLAIMER, sha256_file
from pneumoscan.runs import CARD_JSON, CARD_MARKDOWN, latest_report

INTENDED_USE = (
    "Research, teaching and engineering: reproducing and comparing pneumonia classifiers on public chest "
    "X-ray data, and demonstrating an honest evaluation and deployment pipeline."
)
OUT_OF_SCOPE = [
    "Any clinical decision: diagnosis, triage, screening or ruling out pneumonia in a patient.",
    "Adult radiographs, lateral views, CT, or any image that is not a chest radiograph. Posterior-anterior "
    "(PA) views are scored (the DICOM node and the gate pass frontal views, AP and PA) but untested: the "
    "training and test data are AP. The scope gate (see 'Scope gate') refuses much of this, not all of it: it is a "
    "safeguard against the wrong file, not a guarantee that an image it passes is within scope.",
    "Telling bacterial from viral pneumonia, or any other finding (effusion, nodules, lines and tubes).",
]
LIMITATIONS = [
    "The default training data (Kermany et al. 2018) are paediatric AP radiographs (ages 1-5) from one "
    "centre in Guangzhou; performance on other populations, scanners and hospitals is unknown.",
    "The public copies were resized to 224x224 and stretched to a square; the labels are two physicians' "
    "grades, not laboratory-confirmed diagnoses.",
    "Confidence intervals are patient-level bootstrap intervals on a single test set; they do not cover "
    "the shift to another hospital.",
    "A probability near the threshold is uncertain; the threshold trades sensitivity against specificity "
    "and was fixed at training (by the class balance or on validation data), not for any clinical setting.",
    "Grad-CAM heatmaps show where the network's evidence is, not where the disease is.",
]


def build_model_card(meta: ModelMeta, run_folder: str | os.PathLike | None = None,
                     onnx_file: str | os.PathLike | None = None) -> dict[str, Any]:
    """The model card as a JSON-ready dict, from ``meta`` and the run's newest evaluation report."""
    report_path, report = latest_report(run_folder) if run_folder is not None else (None, None)
    card: dict[str, Any] = {
        "disclaimer": DISCLAIMER,
        "model": {"name": meta.name, "pneumoscan_version": meta.version, "run_id": meta.run_id,
                  "created": meta.created},
        "intended_use": INTENDED_USE,
        # A model with a subtype head tells bacterial from viral, as an image pattern (see its section).
        "out_of_scope": [*OUT_OF_SCOPE[:-1], OUT_OF_SCOPE_WITH_HEAD] if meta.subtype else OUT_OF_SCOPE,
        "input": input_contract(meta),
        "output": {
            **output_contract(meta),
            "temperature": float(meta.temperature or 1.0),
            "threshold": float(meta.threshold),
            "threshold_rule": threshold_rule(meta),
            "label": f"{meta.class_names[1]} when probability >= threshold, else {meta.class_names[0]}",
            "operating_points": dict(meta.operating_points),
        },
        "training_data": _training_data(meta),
        "initial_weights": _initial_weights(meta),
        "metrics": {
            "validation": dict(meta.val_metrics),
            "evaluation": (
                {"report": str(report_path), "created": report.get("created"),
                 "interval_level": (report.get("bootstrap") or {}).get("level"),
                 "interval_unit": (report.get("bootstrap") or {}).get("unit"),
                 "figures": flatten_figures(report)}
                if report is not None else None
            ),
            "note": None if report is not None else
            "no evaluation report found in RUN/reports/: run 'pneumoscan evaluate' for test figures with intervals",
        },
        "scope_gate": scope_gate(meta),
        "subtype": subtype_card(meta, report),
        "limitations": LIMITATIONS,
        **({"int8": meta.provenance[onnx_backend.INT8_KEY]} if meta.provenance.get(onnx_backend.INT8_KEY) else {}),
        "provenance": meta.provenance,
    }
    if onnx_file is not None and Path(onnx_file).is_file():
        card["files"] = {"onnx": Path(onnx_file).name, "onnx_sha256": sha256_file(onnx_file)}
    return card


def _initial_weights(meta: ModelMeta) -> str | None:
    """Which pretrained weights the network started from, with their licence, or None (from scratch)."""
    pretrained = meta.provenance.get("pretrained")
    if not isinstance(pretrained, dict):
        return None
    text = f"{pretrained.get('source')} ({pretrained.get('loaded')} tensors loaded)"
    return f"{text}; {pretrained['licence']}" if pretrained.get("licence") else text


def scope_gate(meta: ModelMeta) -> dict[str, Any]:
    """What the scope gate refuses and how (:mod:`pneumoscan.inference.scope`), for this model."""
    rules = [
        "DICOM files whose Modality is not CR, DX or RG, whose BodyPartExamined names another body part, whose "
        "ViewPosition or ViewCodeSequence names a lateral or other non-frontal view, or whose "
        "PhotometricInterpretation is pseudo-colour (the DICOM node also requires CHEST to be named)",
        "degenerate pixels, before the network: blank, fewer than 32 grey levels, near-flat, NaN or infinite "
        "values, colour pictures",
    ]
    gate = dict(meta.scope or {})
    if not gate:
        return {"rules": rules, "learned": None,
                "note": "this model carries no learned scope gate: only the rules apply"}
    learned = describe(gate)
    return {"rules": rules, "learned": learned, "statistics": gate,
            "output": "an image out of scope gets no probability and no label: 'out of scope: <reason>'; "
                      "--no-scope-check scores it anyway and marks it"}


def write_model_card(folder: str | os.PathLike, meta: ModelMeta, run_folder: str | os.PathLike | None = None,
                     onnx_file: str | os.PathLike | None = None,
                     names: tuple[str, str] = (CARD_JSON, CARD_MARKDOWN)) -> tuple[Path, Path]:
    """Write ``folder/model_card.json`` and ``folder/model_card.md`` (or the two ``names``: an int8 model's
    card, :func:`pneumoscan.runs.card_names`) atomically; return both paths."""
    card = build_model_card(meta, run_folder, onnx_file)
    folder = Path(folder)
    return (atomic_write_json(folder / names[0], card),
            atomic_write_text(folder / names[1], render_markdown(card)))


def flatten_figures(report: dict, limit: int = 80) -> dict[str, Any]:
    """The report's figures as ``{"a.b.c": figure}``, read from its ``metrics`` section when it has one.

    A figure is a number, a ``[low, high]`` pair, or ``{"value", "low", "high"}`` (a value with its
    interval, as ``pneumoscan evaluate`` writes them). The report's layout belongs to the evaluation
    stage; walking it generically keeps the card correct if that layout grows.
    """
    figures: dict[str, Any] = {}

    def number(v: Any) -> bool:
        return v is None or (isinstance(v, int | float) and not isinstance(v, bool))

    def walk(value: Any, key: str) -> None:
        if len(figures) >= limit or isinstance(value, bool):
            return
        if isinstance(value, int | float):
            figures[key] = value
        elif isinstance(value, list | tuple) and len(value) == 2 and all(number(v) for v in value):
            figures[key] = list(value)
        elif isinstance(value, dict) and "value" in value and {"low", "high"} <= set(value) and all(
                number(value[k]) for k in ("value", "low", "high")):
            figures[key] = {k: value[k] for k in ("value", "low", "high")}
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{key}.{k}" if key else str(k))

    walk(report["metrics"] if isinstance(report.get("metrics"), dict) else report, "")
    return figures


def render_markdown(card: dict[str, Any]) -> str:
    """The card for people: the same content as the JSON."""
    model, out, inp = card["model"], card["output"], card["input"]
    lines = [
        f"# Model card: pneumoscan `{model['name']}`",
        "",
        f"> **{card['disclaimer']}**",
        "",
        f"- pneumoscan version: {model['pneumoscan_version'] or 'unknown'}; "
        + (f"run: {model['run_id']}; " if model.get("run_id") else "")  # the bundled model is no run
        + f"created: {model['created'] or 'unknown'}",
    ]
    if "files" in card:
        lines.append(f"- file: `{card['files']['onnx']}` (sha256 `{card['files']['onnx_sha256']}`)")
    lines += ["", "## Intended use", "", card["intended_use"], "", "## Out of scope", ""]
    lines += [f"- {item}" for item in card["out_of_scope"]]
    gate = card.get("scope_gate")
    if gate:
        lines += ["", "## Scope gate", "", "Refused with the reason, never given a probability or a label:", ""]
        lines += [f"- {rule}" for rule in gate["rules"]]
        lines += [f"- {gate['learned']}" if gate.get("learned") else f"- ({gate.get('note')})"]
    lines += [
        "", "## Input", "",
        f"- tensor: `{inp['tensor']}`, layout {inp['layout']}, {inp['channels']} channel",
        f"- grey: {inp.get('grey', 'uint8 grey')}",
        f"- size ({inp['size']} px): {inp.get('resize') or inp['fit']}",
        f"- pixels: {inp['scale']}",
        f"- normalisation: {inp['normalisation']}",
        "", "## Output", "",
        f"- `logit`: {out['logit']}",
        f"- `probability`: {out['probability']}",
        *([f"- `{SCOPE_OUTPUT}`: {out[SCOPE_OUTPUT]}"] if out.get(SCOPE_OUTPUT) else []),
        f"- threshold: **{out['threshold']:.4f}**: {out['label']}",
        f"- how the threshold was chosen: {out.get('threshold_rule') or 'not recorded'}",
    ]
    if out["operating_points"]:
        lines.append("- other operating points (probability thresholds): "
                     + ", ".join(f"{k} {v:.4f}" for k, v in out["operating_points"].items()))
    lines += ["", *subtype_markdown(card.get("subtype"))] if card.get("subtype") else []
    lines += ["", "## Training data", ""]
    lines += [f"- {k}: {v}" for k, v in card["training_data"].items()]
    lines.append(f"- initial weights: {card.get('initial_weights') or 'none (trained from random initialisation)'}")
    lines += ["", "## Metrics", ""]
    validation = card["metrics"]["validation"]
    if validation:
        lines += ["Validation (patients of the training distribution, on which the checkpoint and the temperature were "
                  "chosen, so optimistic):", "",
                  "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in validation.items()]
        lines.append("")
    evaluation = card["metrics"]["evaluation"]
    if evaluation:
        level = evaluation.get("interval_level") or 0.95
        unit = f", resampling {evaluation['interval_unit']}s" if evaluation.get("interval_unit") else ""
        lines += [f"From the evaluation report `{evaluation['report']}` ({level:.0%} bootstrap intervals{unit}):",
                  "", "| figure | value | interval |", "|---|---|---|"]
        lines += [f"| {k} | {_value(v)} | {_interval(v)} |" for k, v in evaluation["figures"].items()]
        lines.append("")
    if card["metrics"]["note"]:
        lines += [f"*{card['metrics']['note']}.*", ""]
    if card.get("int8"):
        lines += ["## int8", ""] + [f"- {k}: {v}" for k, v in card["int8"].items() if k != "float_model"] + [""]
    lines += ["## Limitations", ""]
    lines += [f"- {item}" for item in card["limitations"]]
    lines += ["", "---", "", card["disclaimer"], ""]
    return "\n".join(lines)


def threshold_rule(meta: ModelMeta) -> str | None:
    """Where the stored threshold came from: a site calibration, or the rule applied to validation."""
    calibration = meta.provenance.get("calibration")
    if isinstance(calibration, dict):
        lines = calibration.get("summary")  # versions calibrated before it existed state their rule only
        what = "; ".join(map(str, lines)) if isinstance(lines, list) else str(calibration.get("rule"))
        return f"site calibration on {calibration.get('images')} images of {calibration.get('data')}: {what}"
    config = meta.provenance.get("config")
    rule = config.get("threshold_rule", "youden") if isinstance(config, dict) else None
    if rule in OPERATING_POINTS:
        images = (meta.val_metrics or {}).get("images")
        on = f" ({int(images)} validation images)" if images else ""
        if rule == "balanced":  # no image chose it; validation set the temperature only
            scaled = float(meta.temperature or 1.0) != 1.0
            on = f"; temperature {meta.temperature:.3f} fitted on validation{on}" if scaled else ""
        again = " (re-fitted on the int8 graph's own outputs)" if meta.provenance.get(onnx_backend.INT8_KEY) else ""
        return f"{rule}: {OPERATING_POINTS[rule]}{on}{again}"
    return None


def _training_data(meta: ModelMeta) -> dict[str, Any]:
    """What the provenance says about the data; keys vary with the training code, so pick by name."""
    found = {k: v for k, v in meta.provenance.items()
             if any(word in k.lower() for word in ("data", "manifest", "split", "seed"))
             and isinstance(v, str | int | float)}
    counts = meta.provenance.get("counts")
    if isinstance(counts, dict):
        for split, c in counts.items():
            if isinstance(c, dict):
                found[f"{split} images"] = ", ".join(f"{k}: {v}" for k, v in c.items())
    config = meta.provenance.get("config")
    if isinstance(config, dict):
        found.update({f"config.{k}": v for k, v in config.items()
                      if "data" in k.lower() and isinstance(v, str | int | float)})
    return found or {"note": "no data provenance stored with this model"}


def _value(figure: Any) -> str:
    if isinstance(figure, dict):
        return _fmt(figure["value"])
    return "" if isinstance(figure, list) else _fmt(figure)


def _interval(figure: Any) -> str:
    if isinstance(figure, dict):
        return f"{_fmt(figure['low'])} to {_fmt(figure['high'])}"
    return f"{_fmt(figure[0])} to {_fmt(figure[1])}" if isinstance(figure, list) else ""


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)
