"""Any global model as a diffusers-loadable LoRA (``pipeline.load_lora_weights(dir)`` works)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from ..aggregation import delta_weights, lora_pairs, numerical_rank, truncate
from ..config import ModelConfig
from .lora import ModelView


def adapter_of_view(
    view: ModelView, initial: Mapping[str, np.ndarray], scaling: float, model: ModelConfig
) -> tuple[dict[str, np.ndarray], ModelConfig]:
    """The view's own LoRA, or an exact SVD of its dense update, with the ModelConfig to save it under.

    Dense views (FLoRA's merges, FlexLoRA's mean) become a LoRA of the largest numerical rank over
    modules with lora_alpha = r (scaling 1), so ``load_lora_weights`` reproduces the model.
    ``initial`` is the runtime's adapter (it names the modules and their shapes), ``scaling`` its
    lora_alpha / r.
    """
    if not view.deltas:
        lora = view.lora if view.lora is not None else initial
        return {k: np.asarray(v) for k, v in lora.items()}, model
    like = lora_pairs(initial)
    target = dict(view.deltas)
    if view.lora is not None:
        for prefix, d in delta_weights({k: np.asarray(v) for k, v in view.lora.items()}, scaling).items():
            target[prefix] = target.get(prefix, 0.0) + d
    for prefix, (a, b) in like.items():  # modules the update never touched
        target.setdefault(prefix, np.zeros((b.shape[0], a[0].size)))
    rank = numerical_rank(target)
    return truncate(target, [rank], like)[0], dataclasses.replace(model, lora_rank=rank, lora_alpha=float(rank))
