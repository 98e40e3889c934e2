"""Datasets that need no download, membership splits and client partitions."""

from __future__ import annotations

from ..config import DataConfig
from ..registry import DATASETS

# The built-ins register in this order, the order configs and reports list them in.
# isort: off
from . import mnist  # noqa: F401
from . import digits  # noqa: F401
from . import openmoji  # noqa: F401
from . import image_folder  # noqa: F401
from . import silo  # noqa: F401
from . import shapes  # noqa: F401

# isort: on
from .base import DatasetError, DatasetSource, ImageDataset
from .silo import SiloData, load_silo, uses_silo_data
from .splits import ClientSplit, Splits, make_splits, public_subset

_CACHE: dict[tuple, ImageDataset] = {}


def load_dataset(data: DataConfig) -> ImageDataset:
    """The configured dataset at ``data.image_size``; cached per process (Ray workers reuse it)."""
    key = (data.dataset, data.data_dir, data.image_size, data.on_bad_image)
    if key not in _CACHE:
        source: DatasetSource = DATASETS.get(data.dataset)
        _CACHE[key] = source.load(data)
    return _CACHE[key]


__all__ = [
    "ClientSplit",
    "DatasetError",
    "DatasetSource",
    "ImageDataset",
    "SiloData",
    "Splits",
    "load_dataset",
    "load_silo",
    "make_splits",
    "public_subset",
    "uses_silo_data",
]
