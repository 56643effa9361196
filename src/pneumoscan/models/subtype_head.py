"""The subtype head: bacterial or viral, from the same penultimate features as the pneumonia logit.

A linear probe (logistic regression) on the network's penultimate features (the input of its
classification head), fitted after training on the training PNEUMONIA images whose subtype is known and
never on the others (:mod:`pneumoscan.training.subtype_fit`). The network itself is left as it was: the
pneumonia answer of a model does not change when it gains the head. Its weights live in the model's state
dict under ``subtype.*`` (inside ``model.safetensors``), its calibration and operating point in
``ModelMeta.subtype`` (:mod:`pneumoscan.models.subtype_meta`). :func:`model_outputs` computes the pneumonia
logit, the scope gate and the viral logit in one forward pass: what the torch backend runs and what the
ONNX export traces, so both backends agree.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn

from pneumoscan.models.registry import attached, heads
from pneumoscan.models.scope_gate import gate_of, logit_and_features

PREFIX = "subtype."
_MAX_FEATURES = 4096  # the widest penultimate layer of the registry's networks is 2,048 (resnet50)


class SubtypeHead(nn.Module):
    """The viral-vs-bacterial logit of the penultimate features (buffers: saved with the weights, not trained
    by the network's optimiser)."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.register_buffer("weight", torch.zeros(features, 1))
        self.register_buffer("bias", torch.zeros(1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features @ self.weight + self.bias


class ModelOutputs(NamedTuple):
    """One forward pass: the pneumonia logits (N, 1), the scope gate's output (N, K) and the viral logits
    (N, 1), the last two None for a model without that part."""

    logits: torch.Tensor
    scope: torch.Tensor | None
    viral: torch.Tensor | None


def subtype_of(model: nn.Module) -> SubtypeHead | None:
    return attached(model, "subtype", SubtypeHead)


def attach_subtype(model: nn.Module, head: SubtypeHead) -> nn.Module:
    """Register ``head`` on ``model`` as ``model.subtype`` (its buffers join the state dict as ``subtype.*``)."""
    model.subtype = head
    return model


def model_outputs(model: nn.Module, images: torch.Tensor) -> ModelOutputs:
    """The logits, the scope gate's output and the viral logits of ``images``, in one forward pass."""
    gate, head = gate_of(model), subtype_of(model)
    if gate is None and head is None:
        return ModelOutputs(model(images), None, None)
    logits, features = logit_and_features(model, images)
    return ModelOutputs(logits, None if gate is None else gate(features), None if head is None else head(features))


def subtype_shapes(shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """The ``subtype.*`` tensors a model file with a head holds, read from its header; empty without one."""
    weight = shapes.get(PREFIX + "weight")
    if weight is None:
        return {}
    features = weight[0] if len(weight) == 2 and 0 < weight[0] <= _MAX_FEATURES else _MAX_FEATURES + 1
    return {PREFIX + "weight": (features, 1), PREFIX + "bias": (1,)}


def subtype_for_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Give ``model`` an empty head shaped like the ``subtype.*`` tensors of ``state`` (before loading it)."""
    weight = state.get(PREFIX + "weight")
    if weight is not None and weight.ndim == 2:
        attach_subtype(model, SubtypeHead(int(weight.shape[0])))


def subtype_problem(model: nn.Module, subtype: dict[str, Any]) -> str | None:
    """What keeps the head that ``ModelMeta.subtype`` describes from running on ``model``, or None: a model
    whose metadata claims a head carries one as wide as its penultimate features, and a head is described."""
    head = subtype_of(model)
    if not subtype:
        return None if head is None else "it holds subtype.* tensors but its metadata describes no subtype head"
    if head is None:
        return ("its metadata describes a subtype head but it holds no subtype.* tensors; refit it with "
                "`pneumoscan fit-subtype`")
    features = sum(h.in_features for h in heads(model))
    if head.weight.shape[0] != features:
        return (f"its subtype head reads {head.weight.shape[0]} features but the network has {features}; refit it "
                "with `pneumoscan fit-subtype`")
    return None


__all__ = ["ModelOutputs", "SubtypeHead", "attach_subtype", "model_outputs", "subtype_for_state", "subtype_of",
           "subtype_problem", "subtype_shapes"]
