"""The model card's section on the subtype answer (bacterial or viral), for a model with a subtype head:
what the answer is, how its band was chosen, its validation (and, where the run was evaluated, test)
figures, the ONNX outputs that carry it, and what it is not.
"""

from __future__ import annotations

from typing import Any

from pneumoscan.inference.onnx_backend import output_contract
from pneumoscan.models.artifact import ModelMeta

WHAT_IT_IS = ("P(viral | pneumonia): for an image answered PNEUMONIA, the calibrated probability that the pneumonia "
              "is viral rather than bacterial, computed from the same features as the pneumonia logit. The answer "
              "is bacterial, viral or uncertain (inside the band); NORMAL answers, refused images and models "
              "without the head carry none.")
WHAT_IT_IS_NOT = [
    "Not a microbiological diagnosis: it names the image pattern that the training labels associated with each "
    "kind, not the organism, and mixed or atypical infections have no answer of their own.",
    "Trained on one paediatric centre's labels (Guangzhou Women and Children's Medical Center, children aged "
    "1-5); on adults, other centres or other case mixes its figures are unknown.",
    "The labels themselves came from the original study's clinical annotation of the images (Kermany et al. "
    "2018), not from laboratory-confirmed pathogens.",
]
OUT_OF_SCOPE_WITH_HEAD = ("A microbiological diagnosis: the subtype answer (see 'Subtype answer') is an image "
                          "pattern, not the organism; and any finding other than pneumonia (effusion, nodules, lines "
                          "and tubes).")


def subtype_card(meta: ModelMeta, report: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The card's ``subtype`` section, or None for a model without a subtype head; ``report``: the model's
    evaluation report (``report.json``), whose subtype figures are added when it has them."""
    rule = dict(meta.subtype or {})
    if not rule:
        return None
    low, high = rule["uncertain"]
    section: dict[str, Any] = {
        "what": WHAT_IT_IS,
        "temperature": float(rule["temperature"]),
        "threshold": float(rule["threshold"]),
        "uncertain": [float(low), float(high)],
        "answers": f"bacterial below {low:.4f}, viral at or above {high:.4f}, uncertain in between; sensitivity and "
                   f"specificity are reported at the single operating point {float(rule['threshold']):.4f}",
        "rule": rule.get("rule") or "not recorded",
        "fitted_on": rule.get("fitted_on") or "not recorded",
        "validation": dict(rule.get("val_metrics") or {}),
        "onnx_outputs": {name: text for name, text in output_contract(meta).items() if name.startswith("viral")},
        "not": list(WHAT_IT_IS_NOT),
    }
    evaluated = (report or {}).get("subtype")
    if isinstance(evaluated, dict):
        section["evaluation"] = (
            {m: evaluated["figures"][m] for m in evaluated.get("figures", {})} | {
                "uncertain_share": evaluated.get("uncertain_share"), "images": evaluated.get("images")}
            if evaluated.get("available") else {"note": evaluated.get("reason")})
    return section


def subtype_markdown(section: dict[str, Any] | None) -> list[str]:
    """The section for people (no lines for a model without a head)."""
    if not section:
        return []
    lines = ["## Subtype answer", "", section["what"], "",
             f"- answers: {section['answers']}",
             f"- how the band was chosen: {section['rule']}",
             f"- fitted on: {section['fitted_on']}; temperature {section['temperature']:.3f}"]
    lines += [f"- ONNX output `{name}`: {text}" for name, text in section["onnx_outputs"].items()]
    if section["validation"]:
        lines.append("- validation: " + ", ".join(f"{k} {_number(v)}" for k, v in section["validation"].items()))
    evaluation = section.get("evaluation")
    if evaluation and "note" in evaluation:
        lines.append(f"- evaluation: no subtype figures ({evaluation['note']})")
    elif evaluation:
        lines.append("- evaluation report: " + ", ".join(
            f"{k} {_figure(v)}" for k, v in evaluation.items() if v is not None))
    lines += ["", "What it is not:", ""]
    lines += [f"- {item}" for item in section["not"]]
    return lines


def _number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _figure(value: Any) -> str:
    if isinstance(value, dict) and value.get("value") is not None:
        interval = (f" [{value['low']:.3f}, {value['high']:.3f}]"
                    if value.get("low") is not None and value.get("high") is not None else "")
        return f"{value['value']:.3f}{interval}"
    return "n/a" if isinstance(value, dict) else _number(value)
