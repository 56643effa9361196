"""The images ``predict`` refuses as out of scope, in an evaluation: found as ``predict`` finds them, named in
the report, and kept out of its metrics (which are those of the images the model gives a probability)."""

from __future__ import annotations

from typing import Any

import numpy as np

from pneumoscan.evaluation import intervals as I
from pneumoscan.evaluation import metrics as M
from pneumoscan.evaluation.config import EvaluateConfig
from pneumoscan.evaluation.operating import apply_temperature
from pneumoscan.evaluation.results import Figure
from pneumoscan.evaluation.scoring import Member

METRICS_ON = ("the images the model scored: the images it refuses as out of scope are counted and listed here, "
              "not in the metrics (predict gives them no probability and no label)")
ALL_IMAGES_METRICS = ("sensitivity", "specificity", "accuracy")


def out_of_scope(members: list[Member], images: np.ndarray, samples: list, batch_size: int = 64) -> dict[int, str]:
    """``{index: reason}`` of the images that ``predict`` refuses as out of scope: the file and pixel rules,
    then each member's learned gate (an ensemble refuses what any member refuses), as in
    :meth:`~pneumoscan.inference.Classifier.predict`. ``images``: the decoded model inputs, uint8 (N, S, S)."""
    from pneumoscan.data.radiograph import pixel_problem
    from pneumoscan.inference import scope

    names = [str(s.path) for s in samples]
    # predict reports pixels that hold no radiograph as unreadable: here they are refused with that reason
    rules = [scope.file_reason(s.path) or pixel_problem(pixels) for s, pixels in zip(samples, images, strict=True)]
    found = {i: reason for i, reason in enumerate(rules) if reason}
    for member in members:
        if not scope.has_gate(member.classifier.meta):  # the rules above are all it would apply
            continue
        rows = member.classifier.with_scope_check(True).assess(images, names, rules, batch_size)
        for i, (name, row) in enumerate(zip(names, rows, strict=True)):
            if row.error and i not in found:
                found[i] = row.error.removeprefix(scope.message(name, ""))
    return dict(sorted(found.items()))


def scope_record(members: list[Member], samples: list, refused: dict[int, str], raw: np.ndarray,
                 temperature: float | None, stored: float, config: EvaluateConfig) -> dict[str, Any]:
    """The report's ``scope``: what was checked, how many images were refused (per class), each refused
    file with its reason, and, where some were refused, the stored threshold's figures on every image
    (the refused ones scored with the check off) beside the report's, so a reader sees what refusing cost."""
    from pneumoscan.inference import scope

    labels = np.array([s.label for s in samples], dtype=np.int64)
    gated = [m.source.name for m in members if scope.has_gate(m.classifier.meta)]
    refused_labels = labels[list(refused)] if refused else np.zeros(0, np.int64)
    record: dict[str, Any] = {
        "checked": "file and pixel rules" + (", and the learned gate of " + ", ".join(gated) if gated else ""),
        "note": None if len(gated) == len(members) else scope.NO_GATE_NOTE,
        "metrics_on": METRICS_ON,
        "decoded": len(samples), "scored": len(samples) - len(refused), "refused": len(refused),
        "refused_pneumonia": int((refused_labels == 1).sum()), "refused_normal": int((refused_labels == 0).sum()),
        "images": [{"path": str(samples[i].path), "label": int(labels[i]), "reason": reason}
                   for i, reason in refused.items()],
        "all_images": None,
    }
    if refused:
        probs = apply_temperature(raw, temperature) if temperature else raw
        patients = np.array([s.patient_id for s in samples], dtype=str)
        weights = M.patient_bootstrap_weights(patients, config.bootstrap, config.seed)
        found = I.estimates(labels, probs, {"stored": stored}, weights, config.level, config.bins)["at"]["stored"]
        record["all_images"] = {m: Figure.of(found[m]) for m in ALL_IMAGES_METRICS}
    return record


def refused_text(record: dict[str, Any] | None) -> str | None:
    """One sentence for the top of a report: how many images were refused and what the metrics are on."""
    if not record or not record.get("refused"):
        return None
    n = record["refused"]
    return (f"{n} of the {record['decoded']} decoded images ({record['refused_pneumonia']} pneumonia, "
            f"{record['refused_normal']} normal) {'was' if n == 1 else 'were'} refused as out of the model's scope "
            f"({record['checked']}) and {'is' if n == 1 else 'are'} not in the metrics, which are on the "
            f"{record['scored']} scored images; they are listed under 'Out of scope'")
