"""Generation quality of a run's final model: a caption probe and, if asked, KID/FID.

The caption probe is a cheap, offline check of one question, whether samples show what their
captions say: a logistic-regression classifier is fit on the public split's pixels with the
caption as the label, then applied to generated images. Only meaningful for datasets with few
distinct captions (class-like), e.g. the digits. KID/FID use the offline Inception network
(``inception.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..config import ExperimentConfig
from ..data import ImageDataset, Splits, load_dataset, public_subset
from ..models.lora import ModelView
from .samples import generate
from .tracking import pick_eval_ids

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
            raise ValueError(
                f"{len(self.classes)} distinct captions: a caption probe needs at most {MAX_CAPTION_CLASSES}"
            )
        self.model = LogisticRegression(max_iter=300, C=0.5, random_state=seed)
        self.model.fit(_features(public.images), list(public.captions))

    def accuracy(self, images: np.ndarray, captions: Sequence[str]) -> float:
        return float(np.mean(self.model.predict(_features(images)) == np.asarray(captions)))


def caption_probe_or_none(public: ImageDataset, seed: int = 0) -> CaptionProbe | None:
    return CaptionProbe(public, seed) if len(set(public.captions)) <= MAX_CAPTION_CLASSES else None


def measure_quality(cfg: ExperimentConfig, runtime: Any, splits: Splits, view: ModelView) -> dict[str, float]:
    """Caption-probe accuracy (final model, base with B = 0, real members) and, if asked, KID/FID."""
    dataset = load_dataset(cfg.data)
    kwargs = sampling_kwargs(cfg)
    out: dict[str, float] = {}
    probe = (
        caption_probe_or_none(public_subset(dataset, cfg.data), seed=cfg.run.seed)
        if cfg.evaluation.quality_samples
        else None
    )
    if probe is not None:
        member_ids, _ = pick_eval_ids(splits, cfg.evaluation.quality_samples, cfg.run.seed + 1)
        idx = dataset.indices_of(member_ids)
        captions = [dataset.captions[i] for i in idx]
        out["caption_accuracy_real_members"] = probe.accuracy(dataset.images[idx], captions)
        runtime.show(ModelView())
        out["caption_accuracy_base"] = probe.accuracy(generate(runtime.pipe, captions, **kwargs), captions)
        runtime.show(view)
        out["caption_accuracy"] = probe.accuracy(generate(runtime.pipe, captions, **kwargs), captions)
        out["caption_accuracy_n"] = float(len(captions))
    if cfg.evaluation.kid_fid:
        out.update(kid_fid_metrics(cfg, runtime, splits, view, dataset, kwargs))
    return out


def sampling_kwargs(cfg: ExperimentConfig) -> dict[str, Any]:
    """How the quality samples are drawn (the same for every metric of a run, and for a re-measurement)."""
    return dict(steps=cfg.evaluation.sample_steps, guidance_scale=cfg.evaluation.guidance_scale, seed=cfg.run.seed + 1)


def kid_fid_metrics(
    cfg: ExperimentConfig,
    runtime: Any,
    splits: Splits,
    view: ModelView,
    dataset: ImageDataset,
    kwargs: dict[str, Any],
) -> dict[str, float]:
    """KID/FID of samples for member captions against those member images (the paper's reference),
    and ``kid_heldout``: the same samples' KID against as many non-member images, never trained on.

    Against the members, a model scores better the more it reproduces them, so a defence that stops
    the memorisation loses KID even where it generalises as well; the held-out KID tells the two apart."""
    from .inception import inception_features, kid_fid

    member_ids, nonmember_ids = pick_eval_ids(splits, cfg.evaluation.kid_fid_samples, cfg.run.seed + 2)
    idx = dataset.indices_of(member_ids)
    runtime.show(view)
    fake = generate(runtime.pipe, [dataset.captions[i] for i in idx], **kwargs)
    device = str(runtime.device)
    fake_features = inception_features(fake, device=device)
    res = kid_fid(generated_features=fake_features, reference=dataset.images[idx], seed=cfg.run.seed, device=device)
    heldout = kid_fid(
        generated_features=fake_features,
        reference=dataset.images[dataset.indices_of(nonmember_ids)],
        seed=cfg.run.seed,
        compute_fid=False,
        device=device,
    )
    return dict(
        kid=res["kid"],
        kid_std=res["kid_std"],
        fid=res["fid"],
        kid_fid_n_generated=float(res["n_generated"]),
        kid_fid_n_reference=float(res["n_reference"]),
        kid_subset_size=float(res["kid_subset_size"]),
        kid_heldout=heldout["kid"],
        kid_heldout_std=heldout["kid_std"],
    )
