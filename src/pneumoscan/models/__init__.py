"""Networks by name, and their safe on-disk format. Knows nothing of Lightning or of data sources.

Names are imported lazily, so ``from pneumoscan.models.artifact import ModelMeta`` (the ONNX inference
path) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pneumoscan.models.artifact import ModelMeta, load_model, read_meta, save_model
    from pneumoscan.models.registry import available_models, build_model, register_model

_WHERE = {
    "ModelMeta": "artifact", "load_model": "artifact", "read_meta": "artifact", "save_model": "artifact",
    "available_models": "registry", "build_model": "registry", "register_model": "registry",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"pneumoscan.models.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'pneumoscan.models' has no attribute {name!r}")


__all__ = ["ModelMeta", "available_models", "build_model", "load_model", "read_meta", "register_model", "save_model"]
