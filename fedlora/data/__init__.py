"""Datasets that need no download, membership splits and client partitions."""

from __future__ import annotations

from ..config import DataConfig
from .base import DatasetError, ImageDataset
from .splits import ClientSplit, Splits, make_splits, public_subset

_CACHE: dict[tuple, ImageDataset] = {}


def load_dataset(data: DataConfig) -> ImageDataset:
    """The configured dataset at ``data.image_size``; cached per process (Ray workers reuse it)."""
    key = (data.dataset, data.data_dir, data.image_size, data.on_bad_image)
    if key not in _CACHE:
        if data.dataset == "mnist":
            from .mnist import load_mnist

            _CACHE[key] = load_mnist(data.image_size)
        elif data.dataset == "digits":
            from .digits import load_digits_dataset

            _CACHE[key] = load_digits_dataset(data.image_size)
        elif data.dataset == "openmoji":
            from .openmoji import load_openmoji

            _CACHE[key] = load_openmoji(data.image_size)
        elif data.dataset == "folder":
            from .image_folder import load_image_folder

            _CACHE[key], _ = load_image_folder(data.data_dir, data.image_size, on_bad_image=data.on_bad_image)
        else:  # config validation makes this unreachable
            raise DatasetError(f"unknown dataset {data.dataset!r}")
    return _CACHE[key]


__all__ = [
    "ClientSplit",
    "DatasetError",
    "ImageDataset",
    "Splits",
    "load_dataset",
    "make_splits",
    "public_subset",
]
