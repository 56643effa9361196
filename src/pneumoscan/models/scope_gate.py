"""The learned half of the scope gate: how far an image's features lie from the training radiographs.

The features are the network's own penultimate activations (the input of its classification head, the
global-pool output), so every registry network has them and every trained model carries its own
gate. The distance is a Mahalanobis distance to the training images' features, computed through a
whitening projection onto the principal components (at most ``MAX_COMPONENTS``; the rest of the space
counts with its mean variance), so the statistics stay small:

    d(x)^2 = |((x - mean) @ basis) * scale|^2 + residual * (|x - mean|^2 - |(x - mean) @ basis|^2)

A linear probe on the same features tells an upright radiograph from one rotated by 90, 180 or 270
degrees, mirrored top-bottom or inverted (fitted on training images and those same images transformed).

A second linear probe, the kind probe, tells one frontal chest radiograph filling the frame from what users
send by mistake (:mod:`pneumoscan.models.scope_kinds`: viewer screenshots, several radiographs in one
image, one lung, a small radiograph on a canvas, a page of text), fitted on training radiographs (and mild
variants of them) against those kinds made from the same training images.

The statistics live in the model's state dict under ``scope.*`` (inside ``model.safetensors``) and the
thresholds in ``ModelMeta.scope``. The gate's output is (N, 1 + len(ORIENTATIONS) + len(KINDS)): the
distance, the log-probability of each orientation, then of each kind; (N, 7) for a gate fitted before the
kind probe (:mod:`pneumoscan.models.scope_meta`). :func:`pneumoscan.models.subtype_head.model_outputs`
computes the logit, the gate's output and the subtype head's in one pass: it is what the torch backend runs
and what the ONNX export traces, so both backends agree.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from pneumoscan.errors import ConfigError
from pneumoscan.models.registry import attached, heads
from pneumoscan.models.scope_meta import KINDS, MAX_KINDS, ORIENTATIONS

PREFIX = "scope."
MAX_COMPONENTS = 256  # whitened directions kept; a Lite0's 1,280 features stay a 1.3 MB projection
# All the gate's rules together keep this share of the held-out training radiographs (each one keeps
# more: KEEP_EACH); the radiographs the model was made for must almost never be refused.
KEEP = 0.995
KEEP_EACH = 0.998
# The orientation probe refuses only when another orientation is at least this much more likely than
# upright (log-odds; e^1.5 = 4.5 times): an upright radiograph unlike the training ones (a full-size
# original) leaves the probe unsure, and unsure is not refused.
MIN_ORIENTATION_MARGIN = 1.5


class ScopeGate(nn.Module):
    """The Mahalanobis statistics of the training features (buffers: saved with the weights)."""

    def __init__(self, features: int, components: int, kinds: int = 0) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(features))
        self.register_buffer("basis", torch.zeros(features, components))
        self.register_buffer("scale", torch.zeros(components))
        self.register_buffer("residual", torch.zeros(()))
        self.register_buffer("orientation_weight", torch.zeros(features, len(ORIENTATIONS)))
        self.register_buffer("orientation_bias", torch.zeros(len(ORIENTATIONS)))
        self.kinds = kinds
        if kinds:
            self.register_buffer("kind_weight", torch.zeros(features, kinds))
            self.register_buffer("kind_bias", torch.zeros(kinds))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        centred = features - self.mean
        projected = centred @ self.basis
        inside = ((projected * self.scale) ** 2).sum(dim=1)
        outside = (centred**2).sum(dim=1) - (projected**2).sum(dim=1)
        distance = (inside + self.residual * outside.clamp(min=0.0)).sqrt().reshape(-1, 1)
        orientation = torch.log_softmax(features @ self.orientation_weight + self.orientation_bias, dim=1)
        if not self.kinds:
            return torch.cat([distance, orientation], dim=1)
        kind = torch.log_softmax(features @ self.kind_weight + self.kind_bias, dim=1)
        return torch.cat([distance, orientation, kind], dim=1)


def logit_and_features(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (N, 1), penultimate features (N, D)) of one forward pass."""
    taken: list[torch.Tensor] = []
    hooks = [head.register_forward_pre_hook(lambda _, inputs: taken.append(inputs[0].flatten(1)))
             for head in heads(model)]
    try:
        logits = model(images)
    finally:
        for hook in hooks:
            hook.remove()
    return logits, torch.cat(taken, dim=1)


def gate_of(model: nn.Module) -> ScopeGate | None:
    return attached(model, "scope", ScopeGate)


def attach(model: nn.Module, gate: ScopeGate) -> nn.Module:
    """Register ``gate`` on ``model`` as ``model.scope`` (its buffers join the state dict as ``scope.*``)."""
    model.scope = gate
    return model


def gate_shapes(shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """The ``scope.*`` tensors a model file with a gate holds, shaped by its ``scope.basis`` (features x
    components) and ``scope.kind_weight`` (features x kinds), read from the file's header: what
    :func:`gate_for_state` will build, bounded so that a header cannot make it allocate more than a few tens
    of megabytes. Empty for a file without a gate."""
    basis = shapes.get(PREFIX + "basis")
    if basis is None:
        return {}
    if len(basis) != 2 or not 0 < basis[1] <= basis[0] <= _MAX_FEATURES:
        return {PREFIX + "basis": (_MAX_FEATURES, 1, 1)}  # no file matches: refused as a shape mismatch
    features, components = basis
    expected = {PREFIX + "mean": (features,), PREFIX + "basis": (features, components),
                PREFIX + "scale": (components,), PREFIX + "residual": (),
                PREFIX + "orientation_weight": (features, len(ORIENTATIONS)),
                PREFIX + "orientation_bias": (len(ORIENTATIONS),)}
    kinds = shapes.get(PREFIX + "kind_weight")
    if kinds is not None:
        width = kinds[1] if len(kinds) == 2 and 2 <= kinds[1] <= MAX_KINDS else MAX_KINDS + 1
        expected.update({PREFIX + "kind_weight": (features, width), PREFIX + "kind_bias": (width,)})
    return expected


_MAX_FEATURES = 4096  # the widest penultimate layer of the registry's networks is 2,048 (resnet50)


def gate_for_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Give ``model`` an empty gate shaped like the ``scope.*`` tensors of ``state`` (before loading it)."""
    basis, kinds = state.get(PREFIX + "basis"), state.get(PREFIX + "kind_weight")
    if basis is not None and basis.ndim == 2:
        width = int(kinds.shape[1]) if kinds is not None and kinds.ndim == 2 else 0
        attach(model, ScopeGate(int(basis.shape[0]), int(basis.shape[1]), width))


def gate_problem(model: nn.Module, scope: dict[str, Any]) -> str | None:
    """What keeps the gate that ``ModelMeta.scope`` (``scope``) describes from running on ``model`` (its
    statistics loaded), or None: a model whose metadata claims a gate must carry it, as wide as the network's
    penultimate features, with the kind probe its metadata names."""
    from pneumoscan.models.scope_meta import kinds_of

    gate = gate_of(model)
    if not scope:
        return None
    if gate is None:
        return "its metadata describes a scope gate but it holds no scope.* tensors; refit it with `pneumoscan fit-scope`"
    features = sum(head.in_features for head in heads(model))
    if gate.mean.shape[0] != features:
        return (f"its scope gate reads {gate.mean.shape[0]} features but the network has {features}; refit it with "
                "`pneumoscan fit-scope`")
    if gate.kinds != len(kinds_of(scope)):
        return (f"its metadata names {len(kinds_of(scope))} scope kinds but its scope.kind_weight has {gate.kinds}; "
                "refit it with `pneumoscan fit-scope`")
    return None


def orient(images: np.ndarray, which: int) -> np.ndarray:
    """``images`` (N, S, S) as ``ORIENTATIONS[which]`` makes them (0 leaves them as they are)."""
    if which == 0:
        return images
    if which in (1, 2, 3):
        return np.ascontiguousarray(np.rot90(images, which, axes=(1, 2)))
    if which == 4:
        return np.ascontiguousarray(images[:, ::-1])
    return 255 - images


@torch.inference_mode()
def features_of(model: nn.Module, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Penultimate features (N, D) of ``images``: uint8 (N, S, S), the decoded model input."""
    model = model.eval()
    device = next(model.parameters()).device
    out = [logit_and_features(model, torch.from_numpy(images[i:i + batch_size]).to(device).float()[:, None] / 255.0)[1]
           .float().cpu().numpy() for i in range(0, len(images), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def fit_gate(model: nn.Module, fit_images: np.ndarray, held_out: np.ndarray, keep: float = KEEP_EACH,
             components: int = MAX_COMPONENTS, orientation_images: int = 1000, kind_images: int = 700,
             fit: str = "pad", seed: int = 0) -> tuple[ScopeGate, dict[str, Any]]:
    """Fit the gate of ``model`` on training radiographs: the statistics on ``fit_images`` (uint8 (N, S, S),
    the model's input through ``fit``); the orientation probe on the first ``orientation_images`` of them and
    their transforms; the kind probe on them and mild variants of them against ``kind_images`` of each kind
    of :mod:`~pneumoscan.models.scope_kinds` made of them. The thresholds are set on ``held_out`` (other
    training radiographs): each rule keeps ``keep`` of them. Returns the gate (not attached) and the
    ``ModelMeta.scope`` entry."""
    from pneumoscan.models.scope_kinds import augment, synthesise
    from pneumoscan.models.scope_meta import refusals

    fit_features, held = features_of(model, fit_images), features_of(model, held_out)
    kind_images = min(kind_images, max(20, len(fit_images) // 4))  # a small fit stays quick
    made, made_kinds = synthesise(fit_images, kind_images, int(fit_images.shape[1]), fit, seed=seed + 1)
    variants = features_of(model, augment(fit_images[: 2 * kind_images], seed=seed + 2))
    gate, info = _fit_distance(fit_features, held, components, kinds=len(KINDS))
    upright = fit_features[:orientation_images]
    x = np.concatenate([upright] + [features_of(model, orient(fit_images[:orientation_images], k))
                                    for k in range(1, len(ORIENTATIONS))])
    fit_linear_probe(gate.orientation_weight, gate.orientation_bias, x, np.repeat(np.arange(len(ORIENTATIONS)), len(upright)))
    inside = np.concatenate([fit_features, variants])
    x = np.concatenate([inside, features_of(model, made)])
    fit_linear_probe(gate.kind_weight, gate.kind_bias, x, np.concatenate([np.zeros(len(inside), int), made_kinds]))
    with torch.inference_mode():
        out = gate(torch.from_numpy(held)).numpy()
    distance, orientation, kind = out[:, 0], out[:, 1:1 + len(ORIENTATIONS)], out[:, 1 + len(ORIENTATIONS)]
    info["distance_threshold"] = float(np.quantile(distance, keep, method="higher"))
    info["orientation_threshold"] = float(np.quantile(orientation[:, 0], 1 - keep, method="lower"))
    info["orientation_margin"] = max(MIN_ORIENTATION_MARGIN, float(np.quantile(
        orientation[:, 1:].max(axis=1) - orientation[:, 0], keep, method="higher")))
    info["kind_threshold"] = float(np.quantile(kind, 1 - keep, method="lower"))
    info.update(keep=keep, orientation_fitted_on=int(len(upright)), orientations=list(ORIENTATIONS),
                kinds=list(KINDS), kind_fitted_on={"in scope": int(len(inside)), "each other kind": kind_images})
    info["held_out_kept"] = float(1 - np.mean(np.any(list(refusals(out, info).values()), axis=0)))
    return gate, info


def fit_linear_probe(weight: torch.Tensor, bias: torch.Tensor, x: np.ndarray, y: np.ndarray, c: float = 1.0,
                     seed: int = 0) -> None:
    """Fit a logistic regression of ``y`` on the features ``x`` into ``weight`` (D, K) and ``bias`` (K,)
    (multinomial for K classes; K = 1 for two classes: the logit of class 1), the features'
    standardisation folded into them; ``c``: the inverse L2 strength on the standardised features."""
    from sklearn.linear_model import LogisticRegression

    mu, sd = x.mean(axis=0), x.std(axis=0) + 1e-6
    probe = LogisticRegression(C=c, max_iter=3000, random_state=seed).fit((x - mu) / sd, y)
    coef = probe.coef_.T / sd[:, None]
    weight.copy_(torch.from_numpy(coef).float())
    bias.copy_(torch.from_numpy(probe.intercept_ - mu @ coef).float())


def _fit_distance(x: np.ndarray, held_out: np.ndarray, components: int, kinds: int) -> tuple[ScopeGate, dict[str, Any]]:
    from sklearn.covariance import LedoitWolf

    x = np.asarray(x, np.float64)
    n, d = x.shape
    if n < 50 or len(held_out) < 20:
        raise ConfigError(f"the scope gate needs at least 50 training images to fit and 20 to set its thresholds "
                          f"(got {n} and {len(held_out)})")
    mean = x.mean(axis=0)
    covariance = LedoitWolf().fit(x - mean).covariance_  # shrinkage: fewer images than features is fine
    values, vectors = np.linalg.eigh(covariance)
    order = np.argsort(values)[::-1]
    values, vectors = np.clip(values[order], 1e-12, None), vectors[:, order]
    k = min(components, d)
    gate = ScopeGate(d, k, kinds)
    gate.mean.copy_(torch.from_numpy(mean).float())
    gate.basis.copy_(torch.from_numpy(vectors[:, :k]).float())
    gate.scale.copy_(torch.from_numpy(values[:k] ** -0.5).float())
    gate.residual.fill_(float(1.0 / values[k:].mean()) if k < d else 0.0)
    info = {"features": d, "components": k, "fitted_on": n, "held_out": len(held_out),
            "statistic": "Mahalanobis distance of the penultimate features (Ledoit-Wolf covariance, whitened); "
                         "logistic-regression probes of the orientation and of the kind of image on the same features"}
    return gate, info
