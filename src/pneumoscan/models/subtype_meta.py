"""The subtype answer's stored rule, without torch: what ``ModelMeta.subtype`` holds and how a probability
becomes ``bacterial``, ``viral`` or ``uncertain``.

A model with a subtype head computes, beside the pneumonia logit and from the same penultimate features,
a logit that the pneumonia is viral rather than bacterial (:mod:`pneumoscan.models.subtype_head`).
``ModelMeta.subtype`` (empty: no head) stores

- ``temperature``: the head's logit is divided by it before the sigmoid (fitted on validation patients);
- ``threshold``: the single operating point, where sensitivity and specificity are reported (viral at or
  above it);
- ``uncertain``: ``[low, high]``: below ``low`` the answer is bacterial, at or above ``high`` viral, in
  between uncertain (``low == high == threshold`` when validation leaves no band);
- ``rule``: how those were chosen, in words; ``val_metrics`` and ``fitted_on``: what validation said and
  on what the head was fitted.
"""

from __future__ import annotations

import math
from typing import Any

VIRAL, BACTERIAL, UNCERTAIN = "viral", "bacterial", "uncertain"
ANSWERS = (BACTERIAL, VIRAL, UNCERTAIN)
REQUIRED = ("temperature", "threshold", "uncertain")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def problem(value: Any) -> str | None:
    """What is wrong with a stored ``subtype`` field (None when it is fine; ``{}`` is a model without a head)."""
    if not isinstance(value, dict):
        return "must be an object"
    if not value:
        return None
    missing = [k for k in REQUIRED if k not in value]
    if missing:
        return f"lacks {', '.join(missing)}"
    if not (_number(value["temperature"]) and value["temperature"] > 0):
        return "has a temperature that is not a positive number"
    band = value["uncertain"]
    if not (isinstance(band, list) and len(band) == 2 and all(_number(x) and 0 <= x <= 1 + 1e-6 for x in band)
            and band[0] <= band[1]):
        return "has an uncertain band that is not [low, high] with 0 <= low <= high <= 1"
    threshold = value["threshold"]
    if not (_number(threshold) and band[0] <= threshold <= band[1]):
        return "has a threshold outside its uncertain band"
    return None


def subtype_label(subtype: dict[str, Any], probability: float) -> str:
    """``bacterial`` below the band, ``viral`` at or above it, ``uncertain`` inside it."""
    low, high = subtype["uncertain"]
    if probability >= high:
        return VIRAL
    return BACTERIAL if probability < low else UNCERTAIN


__all__ = ["ANSWERS", "BACTERIAL", "UNCERTAIN", "VIRAL", "problem", "subtype_label"]
