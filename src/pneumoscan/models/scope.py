"""The learned half of the scope gate: how far an image's features lie from the training radiographs.

The features are the network's own penultimate activations (the input of its classification head, the
global-pool output), so every registry network has them and every trained model carries its own
gate. The distance is a Mahalanobis distance to the training images' features, computed through a
whitening projection onto the principal components (at most ``MAX_COMPONENTS``; the rest of the space
counts with its mean variance), so the statistics stay small:

    d(x)^2 = |((x - mean) @ basis) * scale|^2 + residual * (|x - mean|^2 - |(x - mean) @ basis|^2)

A linear probe on the same features tells an upright radiograph from one rotated by 90, 180 or 270
degrees, mirrored top-bottom or inverted (fitted on training images and those same images transformed).

The statistics live in the model's state dict under ``scope.*`` (inside ``model.safetensors``) and the
thresholds in ``ModelMeta.scope``. The gate's output is (N, 1 + len(ORIENTATIONS)): the distance, then
the log-probability of each orientation. :func:`logit_and_scope` computes both outputs in one pass: it is
what the torch backend runs and what the ONNX export traces, so both backends agree.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from pneumoscan.errors import ConfigError
from pneumoscan.models.registry import heads

PREFIX = "scope."
MAX_COMPONENTS = 256  # whitened directions kept; a Lite0's 1,280 features stay a 1.3 MB projection
# Each threshold keeps this share of the held-out training radiographs; both together keep >= 99 %.
KEEP = 0.995
ORIENTATIONS = ("upright", "rotated 90 degrees", "rotated 180 degrees", "rotated 270 degrees",
                "mirrored top-bottom", "inverted")


class ScopeGate(nn.Module):
    """The Mahalanobis statistics of the training features (buffers: saved with the weights)."""

    def __init__(self, features: int, components: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(features))
        self.register_buffer("basis", torch.zeros(features, components))
        self.register_buffer("scale", torch.zeros(components))
        self.register_buffer("residual", torch.zeros(()))
        self.register_buffer("orientation_weight", torch.zeros(features, len(ORIENTATIONS)))
        self.register_buffer("orientation_bias", torch.zeros(len(ORIENTATIONS)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        centred = features - self.mean
        projected = centred @ self.basis
        inside = ((projected * self.scale) ** 2).sum(dim=1)
        outside = (centred**2).sum(dim=1) - (projected**2).sum(dim=1)
        distance = (inside + self.residual * outside.clamp(min=0.0)).sqrt().reshape(-1, 1)
        orientation = torch.log_softmax(features @ self.orientation_weight + self.orientation_bias, dim=1)
        return torch.cat([distance, orientation], dim=1)


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
    gate = getattr(model, "scope", None)
    return gate if isinstance(gate, ScopeGate) else None


def logit_and_scope(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(logits (N, 1), the gate's output (N, 7) or None when the model has no gate), one forward pass."""
    gate = gate_of(model)
    if gate is None:
        return model(images), None
    logits, features = logit_and_features(model, images)
    return logits, gate(features)


def attach(model: nn.Module, gate: ScopeGate) -> nn.Module:
    """Register ``gate`` on ``model`` as ``model.scope`` (its buffers join the state dict as ``scope.*``)."""
    model.scope = gate
    return model


def gate_shapes(shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """The ``scope.*`` tensors a model file with a gate holds, shaped by its ``scope.basis`` (features x
    components, read from the file's header): what :func:`gate_for_state` will build, bounded so that a
    header cannot make it allocate more than a few tens of megabytes. Empty for a file without a gate."""
    basis = shapes.get(PREFIX + "basis")
    if basis is None:
        return {}
    if len(basis) != 2 or not 0 < basis[1] <= basis[0] <= _MAX_FEATURES:
        return {PREFIX + "basis": (_MAX_FEATURES, 1, 1)}  # no file matches: refused as a shape mismatch
    features, components = basis
    return {PREFIX + "mean": (features,), PREFIX + "basis": (features, components), PREFIX + "scale": (components,),
            PREFIX + "residual": (), PREFIX + "orientation_weight": (features, len(ORIENTATIONS)),
            PREFIX + "orientation_bias": (len(ORIENTATIONS),)}


_MAX_FEATURES = 4096  # the widest penultimate layer of the registry's networks is 2,048 (resnet50)


def gate_for_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Give ``model`` an empty gate shaped like the ``scope.*`` tensors of ``state`` (before loading it)."""
    basis = state.get(PREFIX + "basis")
    if basis is not None and basis.ndim == 2:
        attach(model, ScopeGate(int(basis.shape[0]), int(basis.shape[1])))


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


def fit_gate(model: nn.Module, fit_images: np.ndarray, held_out: np.ndarray, keep: float = KEEP,
             components: int = MAX_COMPONENTS, orientation_images: int = 1000) -> tuple[ScopeGate, dict[str, Any]]:
    """Fit the gate of ``model`` on training radiographs: the statistics and the orientation probe on
    ``fit_images`` (uint8 (N, S, S); the probe on the first ``orientation_images`` of them and their
    transforms), the thresholds on ``held_out`` (other training radiographs): each keeps ``keep`` of
    them. Returns the gate (not attached) and the ``ModelMeta.scope`` entry."""
    from sklearn.linear_model import LogisticRegression

    fit_features, held = features_of(model, fit_images), features_of(model, held_out)
    gate, info = _fit_distance(fit_features, held, components)
    upright = fit_features[:orientation_images]
    x = np.concatenate([upright] + [features_of(model, orient(fit_images[:orientation_images], k))
                                    for k in range(1, len(ORIENTATIONS))])
    y = np.repeat(np.arange(len(ORIENTATIONS)), len(upright))
    mu, sd = x.mean(axis=0), x.std(axis=0) + 1e-6
    probe = LogisticRegression(C=1.0, max_iter=3000).fit((x - mu) / sd, y)
    weight = probe.coef_.T / sd[:, None]  # the standardisation folded into the weights
    gate.orientation_weight.copy_(torch.from_numpy(weight).float())
    gate.orientation_bias.copy_(torch.from_numpy(probe.intercept_ - mu @ weight).float())
    with torch.inference_mode():
        out = gate(torch.from_numpy(held)).numpy()
    distance, upright_logp = out[:, 0], out[:, 1]
    info["distance_threshold"] = float(np.quantile(distance, keep, method="higher"))
    info["orientation_threshold"] = float(np.quantile(upright_logp, 1 - keep, method="lower"))
    kept = (distance <= info["distance_threshold"]) & (upright_logp >= info["orientation_threshold"])
    info.update(held_out_kept=float(np.mean(kept)), keep=keep, orientation_fitted_on=int(len(upright)),
                orientations=list(ORIENTATIONS))
    return gate, info


def _fit_distance(x: np.ndarray, held_out: np.ndarray, components: int) -> tuple[ScopeGate, dict[str, Any]]:
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
    gate = ScopeGate(d, k)
    gate.mean.copy_(torch.from_numpy(mean).float())
    gate.basis.copy_(torch.from_numpy(vectors[:, :k]).float())
    gate.scale.copy_(torch.from_numpy(values[:k] ** -0.5).float())
    gate.residual.fill_(float(1.0 / values[k:].mean()) if k < d else 0.0)
    info = {"features": d, "components": k, "fitted_on": n, "held_out": len(held_out),
            "statistic": "Mahalanobis distance of the penultimate features (Ledoit-Wolf covariance, whitened); "
                         "a logistic-regression orientation probe on the same features"}
    return gate, info
