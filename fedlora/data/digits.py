"""scikit-learn's 1,797 8x8 handwritten digits: the smallest real dataset that ships offline.

Tiny and instant to load, so smoke tests and CI runs can train on real (if coarse)
images with ten balanced classes.
"""

from __future__ import annotations

import numpy as np

from ..registry import DATASETS
from .base import DatasetError, DatasetSource, ImageDataset, resize_square
from .digit_captions import digit_caption


def load_digits_dataset(image_size: int) -> ImageDataset:
    """Digits scaled from 0..16 to 0..255, drawn dark on white like ``mnist``, upsampled to ``image_size``.

    The ink is inverted (255 - value) so every built-in dataset shares a white background.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise DatasetError("dataset 'digits' needs scikit-learn (pip install scikit-learn)") from exc

    bunch = load_digits()
    raw = np.asarray(bunch.images, dtype=np.float64)  # (1797, 8, 8), 0..16
    labels = np.asarray(bunch.target, dtype=np.int64)
    grey = 255 - np.clip(np.rint(raw * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    images = np.stack([resize_square(im, image_size) for im in grey])  # grey -> RGB inside
    return ImageDataset(
        name="digits",
        ids=tuple(f"digits-{i:05d}" for i in range(len(labels))),
        images=images,
        captions=tuple(digit_caption(int(y)) for y in labels),
        groups=tuple(str(int(y)) for y in labels),
    )


DATASETS.add(
    "digits",
    DatasetSource(load=lambda data: load_digits_dataset(data.image_size)),
    description="scikit-learn's 1,797 8×8 digits (UCI optdigits), upsampled",
    reference="Alpaydin & Kaynak, UCI optdigits (CC BY 4.0)",
)
