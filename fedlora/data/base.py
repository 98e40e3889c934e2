"""The in-memory captioned image set every loader returns.

Keeping images as one uint8 array (not files) makes splits, latent caching and
membership bookkeeping cheap and exact: a sample is an index plus a stable id.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..config import DataConfig


def _accept(data: DataConfig) -> None:
    """A source that needs nothing beyond the common [data] keys."""


@dataclass(frozen=True)
class DatasetSource:
    """A registered dataset (``fedlora.registry.DATASETS``): how to load it for a config, and what
    the config must give it (``validate`` raises ConfigError naming the key)."""

    load: Callable[[DataConfig], ImageDataset]
    validate: Callable[[DataConfig], None] = _accept


class DatasetError(ValueError):
    """A data source could not be read; the message names the file or key at fault."""


@dataclass(frozen=True)
class ImageDataset:
    """Captioned RGB images.

    ``ids`` are stable across runs and machines (derived from the source, never from
    load order), so ``splits.json`` can be audited against the raw data. ``groups`` is
    the label a non-IID partitioner splits on (a class, or a caption group). ``skipped_files``
    names the source files the loader left out (undecodable images under ``on_bad_image = "skip"``),
    so the run can report what its data lacks; subsets do not carry it.
    """

    name: str
    ids: tuple[str, ...]
    images: np.ndarray  # (N, H, W, 3) uint8
    captions: tuple[str, ...]
    groups: tuple[str, ...]
    skipped_files: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        n = len(self.ids)
        if self.images.ndim != 4 or self.images.shape[-1] != 3 or self.images.dtype != np.uint8:
            raise DatasetError(
                f"{self.name}: images must be uint8 (N, H, W, 3), got {self.images.dtype} {self.images.shape}"
            )
        if not (len(self.images) == len(self.captions) == len(self.groups) == n):
            raise DatasetError(
                f"{self.name}: {n} ids, {len(self.images)} images, {len(self.captions)} captions, "
                f"{len(self.groups)} groups; all must match"
            )
        if len(set(self.ids)) != n:
            raise DatasetError(f"{self.name}: sample ids are not unique")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def image_size(self) -> int:
        return int(self.images.shape[1])

    def subset(self, indices: Sequence[int] | np.ndarray) -> ImageDataset:
        idx = np.asarray(indices, dtype=np.int64)
        return ImageDataset(
            name=self.name,
            ids=tuple(self.ids[i] for i in idx),
            images=self.images[idx],
            captions=tuple(self.captions[i] for i in idx),
            groups=tuple(self.groups[i] for i in idx),
        )

    def indices_of(self, ids: Sequence[str]) -> list[int]:
        """Positions of ``ids``; raises naming the first id that is not in the set."""
        where = {sid: i for i, sid in enumerate(self.ids)}
        out = []
        for sid in ids:
            if sid not in where:
                raise DatasetError(f"{self.name}: sample id {sid!r} is not in the dataset")
            out.append(where[sid])
        return out


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop to a square and resize with a box filter (uint8 RGB in, uint8 RGB out)."""
    from PIL import Image

    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    crop = image[top : top + side, left : left + side]
    if side == size:
        return np.ascontiguousarray(crop, dtype=np.uint8)
    pil = Image.fromarray(crop.astype(np.uint8))
    return np.asarray(
        pil.resize((size, size), Image.Resampling.BOX if side > size else Image.Resampling.BICUBIC), dtype=np.uint8
    )
