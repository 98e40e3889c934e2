"""A cheap, offline generation-quality check: do samples show what their captions say?

A logistic-regression probe is fit on the public split's pixels with the caption as the
label, then applied to generated images. This is no FID (no Inception weights ship
offline here); it answers one question, recognisability per caption, and says so by name.
Only meaningful for datasets with few distinct captions (class-like), e.g. the digits.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..data import ImageDataset

MAX_CAPTION_CLASSES = 50


def _features(images: np.ndarray) -> np.ndarray:
    """Grey pixels, 2x2 mean-pooled down to at most 16x16: enough for class-like captions, fast to fit."""
    grey = images.astype(np.float32).mean(axis=-1) / 255.0
    while grey.shape[1] > 16:
        n, h, w = grey.shape
        grey = grey[:, : h // 2 * 2, : w // 2 * 2].reshape(n, h // 2, 2, w // 2, 2).mean(axis=(2, 4))
    return grey.reshape(len(images), -1)


class CaptionProbe:
    def __init__(self, public: ImageDataset, seed: int = 0):
        from sklearn.linear_model import LogisticRegression

        self.classes = sorted(set(public.captions))
        if len(self.classes) > MAX_CAPTION_CLASSES:
            raise ValueError(f"{len(self.classes)} distinct captions: a caption probe needs at most {MAX_CAPTION_CLASSES}")
        self.model = LogisticRegression(max_iter=300, C=0.5, random_state=seed)
        self.model.fit(_features(public.images), list(public.captions))

    def accuracy(self, images: np.ndarray, captions: Sequence[str]) -> float:
        return float(np.mean(self.model.predict(_features(images)) == np.asarray(captions)))


def caption_probe_or_none(public: ImageDataset, seed: int = 0) -> CaptionProbe | None:
    return CaptionProbe(public, seed) if len(set(public.captions)) <= MAX_CAPTION_CLASSES else None
