"""What a reader must be warned of in an evaluation report: leakage between the evaluated patients and
training, missing validation data, skipped and refused images, one class only."""

from __future__ import annotations

import os
from typing import Any

from pneumoscan.evaluation.refused import refused_text
from pneumoscan.evaluation.results import Report
from pneumoscan.evaluation.scoring import Member, run_split
from pneumoscan.runs import SPLIT, split_file


def leakage(members: list[Member], kept) -> dict[str, Any]:
    """Evaluated images or patients that a member saw in training or validation (from its split.csv)."""
    patients = {s.patient_id for s in kept}
    paths = {os.path.abspath(s.path) for s in kept}
    result: dict[str, Any] = {"checked": [], "patients": {}, "images": {}}
    for member in members:
        trained = run_split(member)
        if trained is None:
            continue
        result["checked"].append(str(split_file(member.run_dir)))
        for sample in trained:
            part = sample.split
            if part not in ("train", "val"):
                continue
            if sample.patient_id in patients:
                result["patients"].setdefault(part, set()).add(sample.patient_id)
            if os.path.abspath(sample.path) in paths:
                result["images"].setdefault(part, set()).add(str(sample.path))
    result["patients"] = {k: len(v) for k, v in result["patients"].items()}
    result["images"] = {k: len(v) for k, v in result["images"].items()}
    return result


def report_warnings(report: Report) -> list[str]:
    warnings: list[str] = []
    leak, data = report.leakage, report.data
    for part in ("train", "val"):
        if leak["images"].get(part) or leak["patients"].get(part):
            warnings.append(
                f"LEAKAGE: {leak['images'].get(part, 0)} evaluated images and {leak['patients'].get(part, 0)} "
                f"patients were in the run's {part} split; these figures are optimistic, not a test result")
    if not leak["checked"]:
        warnings.append(f"no {SPLIT} beside the model: could not check the evaluated patients against training")
    if report.validation is None:
        warnings.append("no validation data in the run folder: operating points come from the model file only")
    left_out = data.get("calibration_sample")
    if left_out and not left_out["checked"]:
        warnings.append("the calibration sample's image list (calibration.json) is not beside this calibrated "
                        "model: its images could not be left out, and figures on them are optimistic")
    if data["unreadable"]:
        warnings.append(f"{len(data['unreadable'])} images could not be decoded and were skipped")
    if refused := refused_text(report.scope):
        warnings.append(refused)
    if data["pneumonia"] == 0 or data["normal"] == 0:
        warnings.append("the evaluated split holds one class only: sensitivity/specificity/AUC are undefined")
    return warnings
