"""The scope gate's part of the model metadata (``ModelMeta.scope``) and the layout of its output, without torch.

A gate's output is, per image: the Mahalanobis distance, the log-probability of each of
:data:`ORIENTATIONS` and, for a gate with a kind probe (``kind_threshold`` in its metadata), the
log-probability of each of :data:`KINDS`: (N, 7) for gates fitted before the kind probe existed, (N, 13)
with it. :func:`problem` checks a model file's entry before anything uses it.
"""

from __future__ import annotations

import math
from typing import Any

ORIENTATIONS = ("upright", "rotated 90 degrees", "rotated 180 degrees", "rotated 270 degrees",
                "mirrored top-bottom", "inverted")
# The kind probe's classes, in its output's order: in scope first (made by models.scope_kinds).
KINDS = ("one frontal chest radiograph", "a screenshot of a viewer", "several radiographs in one image",
         "one lung only", "a small radiograph on a blank canvas", "a page of text")
MAX_KINDS = 16


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def kinds_of(scope: dict[str, Any]) -> list[str]:
    """The kind probe's classes of a gate (empty: no kind probe)."""
    return list(scope.get("kinds") or KINDS) if "kind_threshold" in scope else []


def output_width(scope: dict[str, Any]) -> int:
    """Columns of the gate's output for a model whose ``ModelMeta.scope`` is ``scope``."""
    return 1 + len(ORIENTATIONS) + len(kinds_of(scope))


def problem(scope: Any) -> str | None:
    """What is wrong with a ``ModelMeta.scope`` entry, or None: empty (no gate), or thresholds a gate can
    use (a distance threshold above 0, log-probability thresholds at or below 0, a margin of 0 or more)."""
    if not isinstance(scope, dict):
        return "must be an object"
    if not scope:
        return None
    distance, orientation = scope.get("distance_threshold"), scope.get("orientation_threshold")
    if not (_number(distance) and distance > 0):
        return f"distance_threshold must be a number above 0 (got {distance!r})"
    if not (_number(orientation) and orientation <= 0):
        return f"orientation_threshold must be a log-probability, a number of 0 or less (got {orientation!r})"
    margin = scope.get("orientation_margin", 0.0)
    if not (_number(margin) and margin >= 0):
        return f"orientation_margin must be a number of 0 or more (got {margin!r})"
    names = scope.get("orientations", list(ORIENTATIONS))
    if names != list(ORIENTATIONS):
        return f"orientations must be {list(ORIENTATIONS)}"
    if "kind_threshold" in scope:
        threshold, kinds = scope["kind_threshold"], scope.get("kinds", list(KINDS))
        if not (_number(threshold) and threshold <= 0):
            return f"kind_threshold must be a log-probability, a number of 0 or less (got {threshold!r})"
        if not (isinstance(kinds, list) and 2 <= len(kinds) <= MAX_KINDS and all(isinstance(k, str) for k in kinds)):
            return f"kinds must be a list of 2 to {MAX_KINDS} names"
    return None


def refusals(output: Any, scope: dict[str, Any]) -> dict[str, Any]:
    """Which images the gate's ``output`` (N, K) refuses, by rule: ``distance`` (unlike the training
    radiographs), ``kind`` (more like another kind than one frontal radiograph filling the frame) and
    ``orientation`` (another orientation clearly likelier than upright; for gates fitted before the margin,
    p(upright) below its threshold); boolean arrays (N,). Anything not finite is refused."""
    import numpy as np

    out = np.asarray(output, np.float64).reshape(len(output), -1)
    with np.errstate(invalid="ignore"):
        distance = out[:, 0]
        found = {"distance": ~(distance <= float(scope["distance_threshold"]))}
        orientation = out[:, 1:1 + len(ORIENTATIONS)]
        if "orientation_margin" in scope:
            lead = orientation[:, 1:].max(axis=1) - orientation[:, 0]
            found["orientation"] = ~(lead <= float(scope["orientation_margin"]))
        else:
            found["orientation"] = ~(orientation[:, 0] >= float(scope["orientation_threshold"]))
        if kinds_of(scope):
            found["kind"] = ~(out[:, 1 + len(ORIENTATIONS)] >= float(scope["kind_threshold"]))
    return found


def output_text(scope: dict[str, Any]) -> str:
    """What the ``scope`` output of a model with this gate holds (the model card, the ONNX metadata)."""
    text = (f"(N, {output_width(scope)}) the scope gate's distance to the training radiographs, then the "
            "log-probability of each orientation (upright first)")
    return text + (", then of each kind of image (one frontal chest radiograph first)" if kinds_of(scope) else "")


def describe(scope: dict[str, Any]) -> str:
    """The learned gate of ``scope`` in a sentence (the model card)."""
    text = (f"a Mahalanobis distance of the network's penultimate features to {scope.get('fitted_on', '?')} training "
            f"radiographs (refused above {scope['distance_threshold']:.2f}), and an orientation probe on the same "
            "features that refuses radiographs rotated by 90, 180 or 270 degrees, mirrored top-bottom or inverted")
    if "orientation_margin" in scope:
        text += f" (when that is at least e^{scope['orientation_margin']:.2f} times likelier than upright)"
    if kinds_of(scope):
        text += ("; a kind probe on the same features, fitted against " + ", ".join(kinds_of(scope)[1:])
                 + " made of training radiographs, that refuses what is not one frontal chest radiograph filling "
                 "the image")
    return (text + f"; the thresholds set on {scope.get('held_out', '?')} held-out training radiographs, of which "
            f"together {100 * float(scope.get('held_out_kept', 0)):.1f} % pass")
