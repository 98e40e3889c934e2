"""Shapes-20k: 20,000 procedurally drawn captioned images (a coloured circle, square or diamond).

MNIST-5k's 2,500 private images allow about 300 clients of 4 members + 4 non-members; a
thousand such clients need 8,000. These images are drawn from a fixed seed (never the run's),
so their ids and pixels are the same on every machine and every run, and the membership
protocol is the usual one: each image belongs to one client, as a member or as a non-member.
No base model was pretrained on them, so none has seen a private image. Meant for scale
benchmarks (``scripts/bench_scale.py``), not for image quality.
"""

from __future__ import annotations

import numpy as np

from ..registry import DATASETS
from .base import DatasetSource, ImageDataset

NUM_IMAGES = 20_000
SEED = 20_260_101  # fixed: the dataset is part of the code, not of a run
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 70, 220),
    "yellow": (230, 200, 30),
    "purple": (140, 50, 170),
    "black": (20, 20, 20),
}
SHAPES: tuple[str, ...] = ("circle", "square", "diamond")
CHUNK = 1_000


def _masks(kind: np.ndarray, cx: np.ndarray, cy: np.ndarray, r: np.ndarray, size: int) -> np.ndarray:
    """(n, size, size) booleans: pixel inside the image's shape (distances in fractions of the side)."""
    grid = (np.arange(size) + 0.5) / size
    dx = np.abs(grid[None, None, :] - cx[:, None, None])
    dy = np.abs(grid[None, :, None] - cy[:, None, None])
    rr = r[:, None, None]
    circle, square, diamond = dx**2 + dy**2 <= rr**2, np.maximum(dx, dy) <= rr * 0.85, dx + dy <= rr * 1.2
    k = kind[:, None, None]
    return np.where(k == 0, circle, np.where(k == 1, square, diamond))


def load_shapes(image_size: int) -> ImageDataset:
    rng = np.random.default_rng(SEED)
    kind = rng.integers(0, len(SHAPES), NUM_IMAGES)
    colour = rng.integers(0, len(COLOURS), NUM_IMAGES)
    r = rng.uniform(0.18, 0.32, NUM_IMAGES)
    cx, cy = rng.uniform(r, 1 - r), rng.uniform(r, 1 - r)
    palette = np.array(list(COLOURS.values()), dtype=np.uint8)
    images = np.full((NUM_IMAGES, image_size, image_size, 3), 255, dtype=np.uint8)
    for lo in range(0, NUM_IMAGES, CHUNK):
        sl = slice(lo, lo + CHUNK)
        inside = _masks(kind[sl], cx[sl], cy[sl], r[sl], image_size)
        images[sl] = np.where(inside[..., None], palette[colour[sl]][:, None, None, :], images[sl])
    names = list(COLOURS)
    captions = tuple(f"a {names[c]} {SHAPES[k]}" for c, k in zip(colour, kind))
    return ImageDataset(
        name="shapes",
        ids=tuple(f"shapes-{i:05d}" for i in range(NUM_IMAGES)),
        images=images,
        captions=captions,
        groups=captions,
    )


DATASETS.add(
    "shapes",
    DatasetSource(load=lambda data: load_shapes(data.image_size)),
    description="Shapes-20k: 20,000 procedurally drawn captioned shapes (enough for 1,000+ clients)",
    reference="generated in code (fedlora/data/shapes.py)",
)
