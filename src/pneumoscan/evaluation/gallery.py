"""The gallery of ``evaluate``: the worst false positives and negatives, with their Grad-CAM overlay."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from pneumoscan.evaluation.scoring import Member
from pneumoscan.runs import GALLERY


def gallery(member: Member, images, kept, probs, labels, threshold: float, per_kind: int) -> list[dict] | None:
    """The worst false positives and false negatives with their Grad-CAM overlay; None when unavailable."""
    if per_kind <= 0:
        return None
    try:
        from pneumoscan.explain import explanation_picture, gradcam
    except ImportError:  # explain is an optional part of the toolkit
        return None
    import torch

    model = getattr(member.classifier.backend, "model", None)
    if not isinstance(model, torch.nn.Module):  # an ONNX model has no gradients to explain
        return None
    from PIL import Image

    called = probs >= threshold
    false_pos = np.flatnonzero(called & (labels == 0))
    false_neg = np.flatnonzero(~called & (labels == 1))
    chosen = [("false positive", i) for i in false_pos[np.argsort(-probs[false_pos])][:per_kind]]
    chosen += [("false negative", i) for i in false_neg[np.argsort(probs[false_neg])][:per_kind]]
    if not chosen:
        return []
    rows = np.array([i for _, i in chosen])
    heat = gradcam(model, np.ascontiguousarray(images[rows]))
    items = []
    for k, ((kind, i), h) in enumerate(zip(chosen, heat, strict=True)):
        buffer = io.BytesIO()
        Image.fromarray(explanation_picture(images[i], h, longest=224)).save(buffer, format="PNG")
        name = Path(kept[i].path).name
        items.append({"kind": kind, "path": str(kept[i].path), "patient_id": kept[i].patient_id,
                      "probability": float(probs[i]), "image": f"{GALLERY}/{k:02d}-{kind.replace(' ', '-')}.png",
                      "caption": f"{kind}: {name} (p = {probs[i]:.3f})", "png": buffer.getvalue()})
    return items
