"""Data: sources -> :class:`Sample` records -> validation, inspection, patient split, cache, download.

Knows nothing of models. ``load_dataset(root)`` is the one way to list a dataset, whatever its source.
"""

from pneumoscan.data.cache import ImageCache, build_cache
from pneumoscan.data.defaults import cache_root, default_data_root
from pneumoscan.data.download import download_dataset
from pneumoscan.data.image import ImageInfo, probe_image, read_image
from pneumoscan.data.inspect import inspect_dataset
from pneumoscan.data.manifest import write_manifest
from pneumoscan.data.records import CLASS_NAMES, Sample
from pneumoscan.data.sources import DataIndex, kermany_patient_id, load_dataset
from pneumoscan.data.split import split_by_patient, split_dataset
from pneumoscan.data.validate import validate_dataset

__all__ = [
    "CLASS_NAMES", "DataIndex", "ImageCache", "ImageInfo", "Sample", "build_cache", "cache_root",
    "default_data_root", "download_dataset", "inspect_dataset", "kermany_patient_id", "load_dataset",
    "probe_image", "read_image", "split_by_patient", "split_dataset", "validate_dataset", "write_manifest",
]
