"""Training ends by fitting the model's scope gate on its own training images (or says why it could not)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from PIL import Image

from helpers.synthetic import write_synthetic_image
from pneumoscan.models import build_model
from pneumoscan.models.scope_gate import gate_of
from pneumoscan.training.config import TrainConfig
from pneumoscan.training.run import _fit_scope


def _images(folder, n: int) -> np.ndarray:
    return np.stack([np.asarray(Image.open(write_synthetic_image(folder / f"{i}.png", i % 2, seed=i, size=32)))
                     for i in range(n)])


def test_the_trained_network_gets_a_gate_fitted_on_its_training_images(tmp_path):
    import torch

    torch.manual_seed(0)
    network, provenance = build_model("mini-resnet", 32), {}
    scope = _fit_scope(network, SimpleNamespace(train_images=_images(tmp_path, 120)), TrainConfig(), provenance)
    assert gate_of(network) is not None and "warnings" not in provenance
    assert scope["fitted_on"] + scope["held_out"] == 120
    # Each threshold keeps 99.8 % of the held-out images, interpolated: of 24, the three together lose at most one.
    assert round(scope["held_out_kept"] * scope["held_out"]) >= scope["held_out"] - 1
    assert set(network.state_dict()) >= {"scope.mean", "scope.basis", "scope.orientation_weight"}


def test_too_few_training_images_leave_no_gate_and_a_warning_in_the_provenance(tmp_path):
    network, provenance = build_model("mini-resnet", 32), {}
    assert _fit_scope(network, SimpleNamespace(train_images=_images(tmp_path, 40)), TrainConfig(), provenance) == {}
    assert gate_of(network) is None
    assert any(w.startswith("no scope gate: the scope gate needs at least 50") for w in provenance["warnings"])
