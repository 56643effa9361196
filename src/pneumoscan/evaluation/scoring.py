"""Scoring for ``evaluate``: the models (one, or an ensemble, with optional TTA), the run's validation
scores, and the operating points frozen before the evaluated images are scored."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pneumoscan._io import csv_text
from pneumoscan.errors import DatasetError
from pneumoscan.evaluation.config import EvaluateConfig
from pneumoscan.evaluation.operating import OPERATING_POINTS, POINT_NAMES, choose_operating_points
from pneumoscan.runs import VAL_PREDICTIONS, split_file

# The stored threshold's rule is read from each model (point_rules); this is what a model that records none gets.
UNRECORDED_RULE = "the threshold stored in the model, applied as is (the model does not record how it was chosen)"
RULES = {"stored": UNRECORDED_RULE,
         "original": "the stored threshold of the model before site calibration, in this version's scale",
         "site-estimate": "the calibration sample's own estimate for the target sensitivity (bootstrap median), "
                          "adopted by `pneumoscan calibrate` only where the sample could support it",
         **OPERATING_POINTS}


@dataclass
class Member:
    """One model of the evaluation (an ensemble has several) and the run folder it came from."""

    source: Path
    run_dir: Path | None
    classifier: Any


def point_rules(members: list[Member], metas: list) -> dict[str, str]:
    """How each operating point was chosen; the stored threshold's rule as the model's metadata records it
    (the training's rule on validation, or a site calibration), so no renderer describes a default."""
    from pneumoscan.inference.model_card import threshold_rule

    rules = [threshold_rule(meta) or UNRECORDED_RULE for meta in metas]
    if len(members) == 1:
        stored = f"stored in the model and applied as is; {rules[0]}"
    else:
        stored = "mean of the members' stored thresholds; " + "; ".join(
            f"{m.source.name}: {rule}" for m, rule in zip(members, rules, strict=True))
    return {**RULES, "stored": stored}


def score(members: list[Member], images: np.ndarray, config: EvaluateConfig) -> np.ndarray:
    """Mean pneumonia probability over the ensemble members (and the flipped image with TTA)."""
    return scores(members, images, config)[0]


def scores(members: list[Member], images: np.ndarray, config: EvaluateConfig) -> tuple[np.ndarray, np.ndarray | None]:
    """(:func:`score`, and for one model with a subtype head its viral probability of every image, else None),
    from the same network passes."""
    with_viral = len(members) == 1 and bool(members[0].classifier.meta.subtype)
    views = [images] + ([np.ascontiguousarray(images[..., ::-1])] if config.tta else [])
    total, viral = np.zeros(len(images), dtype=np.float64), np.zeros(len(images), dtype=np.float64)
    for member in members:
        for view in views:
            out = member.classifier.predict_proba(view, config.batch_size, subtype=with_viral)
            total += out[:, 0] if with_viral else out
            if with_viral:
                viral += out[:, 1]
    return total / (len(members) * len(views)), (viral / len(views) if with_viral else None)


def validation_scores(members: list[Member], config: EvaluateConfig, size: int, fit: str) -> dict | None:
    """The validation labels and scores of the same scorer (model, ensemble, TTA) as the evaluation.

    The run's ``val_predictions.csv`` is used as is when it was made by the same scorer (one model, no
    TTA); otherwise the validation rows of ``split.csv`` are scored again.
    """
    if not config.tta:
        tables = [read_csv(m.run_dir / VAL_PREDICTIONS) for m in members
                  if m.run_dir and (m.run_dir / VAL_PREDICTIONS).is_file()]
        if len(tables) == len(members):
            try:
                rows = [{r["path"]: r for r in table} for table in tables]
                common = sorted(set.intersection(*(set(r) for r in rows)))
                if common:
                    return {
                        "labels": np.array([int(float(rows[0][p]["label"])) for p in common]),
                        "probs": np.mean([[float(r[p]["probability"]) for p in common] for r in rows], axis=0),
                        "patients": [rows[0][p].get("patient_id") or p for p in common],
                        "source": f"{VAL_PREDICTIONS} of the run" + ("s (common images, mean)" if len(rows) > 1 else ""),
                    }
            except (KeyError, ValueError) as exc:
                raise DatasetError(f"{members[0].run_dir}/{VAL_PREDICTIONS}: expected columns "
                                   f"path,patient_id,label,probability ({exc})") from None
    trained = run_split(members[0])
    if trained is None:
        return None
    from pneumoscan.data import build_cache

    source = split_file(members[0].run_dir)
    val = [s for s in trained if s.split == "val" and s.label is not None]
    if not val:
        return None
    cache = build_cache(val, size, fit, progress=False)  # type: ignore[arg-type]
    images, kept = cache.subset(None)
    if not kept:
        return None
    return {"labels": np.array([s.label for s in kept]), "probs": score(members, images, config),
            "patients": [s.patient_id for s in kept],
            "source": f"validation rows of {source} scored again ({len(cache.failures)} unreadable)"}


def operating_points(members, metas, validation, config) -> tuple[dict[str, float], str, float]:
    """(validation operating points, where they come from, the stored threshold).

    A site-calibrated model also carries its original threshold (``original``, in the calibrated
    probability scale) and the sample's own estimate (``site-estimate``): the report shows them side by side.
    """
    stored = float(np.mean([meta.threshold for meta in metas]))
    same_scorer = len(members) == 1 and not config.tta
    saved = metas[0].operating_points or {}
    extra = {k: float(saved[k]) for k in ("original", "site-estimate") if same_scorer and k in saved}
    # Model files from before the bootstrap-median point hold the three classic ones only.
    complete = all(k in saved for k in ("youden", "sens95", "spec95"))
    from_file = {k: float(saved[k]) for k in POINT_NAMES if k in saved}
    if same_scorer and complete:
        return from_file | extra, "model file (stored at training)", stored
    if validation is not None:
        return (choose_operating_points(validation["labels"], validation["probs"]) | extra,
                f"chosen now on validation ({validation['source']})", stored)
    if complete:
        return (from_file | extra,
                "model file (stored at training, without TTA/ensemble; no validation data to redo them)", stored)
    return extra, "none: the model file stores no operating points and the run has no validation data", stored


def run_split(member: Member) -> list | None:
    """The samples of the run's ``split.csv`` (names only: files that moved away are kept), or None; a
    site-calibrated version's is that of the run it came from."""
    from pneumoscan.data.manifest import load_manifest

    found = split_file(member.run_dir) if member.run_dir else None
    if found is None:
        return None
    return load_manifest(found, keep_missing=True).samples


def read_csv(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8", errors="surrogateescape") as fh:  # non-UTF-8 names
            return [{k: csv_text(v) if isinstance(v, str) else v for k, v in row.items()} for row in csv.DictReader(fh)]
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc.strerror})") from None

