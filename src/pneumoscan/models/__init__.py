"""Networks by name, and their safe on-disk format. Knows nothing of Lightning or of data sources."""

from pneumoscan.models.artifact import ModelMeta, load_model, read_meta, save_model
from pneumoscan.models.registry import available_models, build_model, register_model

__all__ = ["ModelMeta", "available_models", "build_model", "load_model", "read_meta", "register_model", "save_model"]
