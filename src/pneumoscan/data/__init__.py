"""Data: sources -> :class:`Sample` records -> validation, inspection, patient split, cache, download.

Knows nothing of models. ``load_dataset(root)`` is the one way to list a dataset, whatever its source.
Names are imported lazily, so the prediction path (``data.image``, ``data.records``) does not load the
cache, download and inspection machinery.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pneumoscan.data.cache import ImageCache, build_cache
    from pneumoscan.data.defaults import cache_root, default_data_root
    from pneumoscan.data.download import download_dataset
    from pneumoscan.data.image import ImageInfo, probe_image, read_image
    from pneumoscan.data.inspect import inspect_dataset
    from pneumoscan.data.manifest import write_manifest
    from pneumoscan.data.records import CLASS_NAMES, SUBTYPES, DataIndex, Sample, kermany_patient_id
    from pneumoscan.data.sources import load_dataset
    from pneumoscan.data.split import split_by_patient, split_dataset
    from pneumoscan.data.validate import validate_dataset

_WHERE = {
    "ImageCache": "cache", "build_cache": "cache", "cache_root": "defaults", "default_data_root": "defaults",
    "download_dataset": "download", "ImageInfo": "image", "probe_image": "image", "read_image": "image",
    "inspect_dataset": "inspect", "write_manifest": "manifest", "CLASS_NAMES": "records", "SUBTYPES": "records",
    "Sample": "records",
    "DataIndex": "records", "kermany_patient_id": "records", "load_dataset": "sources",
    "split_by_patient": "split", "split_dataset": "split", "validate_dataset": "validate",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"pneumoscan.data.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'pneumoscan.data' has no attribute {name!r}")


__all__ = [
    "CLASS_NAMES", "SUBTYPES", "DataIndex", "ImageCache", "ImageInfo", "Sample", "build_cache", "cache_root",
    "default_data_root", "download_dataset", "inspect_dataset", "kermany_patient_id", "load_dataset",
    "probe_image", "read_image", "split_by_patient", "split_dataset", "validate_dataset", "write_manifest",
]
