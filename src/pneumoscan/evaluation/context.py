"""What a report is read against: the model's in-distribution validation figures and, on the official
Kermany test images, figures published on that split.

A figure on new-site data means little alone, and an in-distribution figure even less: the report shows
them side by side. The published figures use the whole official test split (624 images) and are context,
not a like-for-like comparison.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

PUBLISHED_KERMANY_TEST: tuple[dict[str, Any], ...] = (
    {"source": "Kermany et al. 2018 (Cell), ImageNet-pretrained Inception v3", "images": 624,
     "accuracy": 0.928, "sensitivity": 0.932, "specificity": 0.901, "roc_auc": 0.968},
    {"source": "MedMNIST v2 (Yang et al. 2023), ResNet-50 at 224 px", "images": 624,
     "accuracy": 0.884, "roc_auc": 0.962},
    {"source": "Google AutoML Vision", "images": 624, "accuracy": 0.946, "roc_auc": 0.991},
)


def is_kermany_test(paths: Sequence[str | Path], split: str, root: str | Path) -> bool:
    """True when every evaluated file follows the Kermany naming and the data is a test split."""
    from pneumoscan.data.records import follows_kermany_naming

    is_test = split == "test" or Path(root).name.lower() == "test"
    return bool(paths) and is_test and all(follows_kermany_naming(Path(p).stem) for p in paths)


def report_context(metas: Sequence[Any], paths: Sequence[str | Path], split: str, root: str | Path) -> dict[str, Any]:
    """``in_distribution``: the model file's validation figures (one model); ``published``: on Kermany test."""
    context: dict[str, Any] = {}
    val = (metas[0].val_metrics or {}) if len(metas) == 1 else {}
    if {"auc", "sensitivity", "specificity"} <= set(val):
        context["in_distribution"] = {
            "source": f"validation at training ({int(val.get('images', 0))} images of the training distribution)",
            "roc_auc": val["auc"], "accuracy": val.get("accuracy"), "sensitivity": val["sensitivity"],
            "specificity": val["specificity"], "threshold": val.get("threshold"),
        }
    if is_kermany_test(paths, split, root):
        context["published"] = [dict(row) for row in PUBLISHED_KERMANY_TEST]
    return context
