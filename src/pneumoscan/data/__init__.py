"""Data: sources -> :class:`Sample` records -> validation, patient split, cache. Knows nothing of models."""

from pneumoscan.data.cache import ImageCache, build_cache
from pneumoscan.data.defaults import cache_root, default_data_root
from pneumoscan.data.image import ImageInfo, probe_image, read_image
from pneumoscan.data.records import CLASS_NAMES, Sample
from pneumoscan.data.sources import DataIndex, kermany_patient_id, load_dataset
from pneumoscan.data.split import split_by_patient

__all__ = [
    "CLASS_NAMES", "DataIndex", "ImageCache", "ImageInfo", "Sample", "build_cache", "cache_root",
    "default_data_root", "kermany_patient_id", "load_dataset", "probe_image", "read_image", "split_by_patient",
]
