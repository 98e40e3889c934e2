"""SimA's single-query score norm (Rao et al., arXiv 2509.25003)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ...registry import ATTACKS
from .base import AttackContext, AttackResult, AttackSets, SampleSet
from .diffusion import DiffusionModel, batches, eps_theta, eval_mode, timestep_attack


@torch.no_grad()
def score_norm_scores(
    model: DiffusionModel, samples: SampleSet, timesteps: Sequence[int], p: float = 4.0
) -> np.ndarray:
    """−‖ε_θ(x_0, t)‖_p^p at the clean latent, no added noise.

    The denoiser points toward a kernel-weighted mean of nearby training samples, so its norm is
    small on a training sample. One query per t; returns (len(timesteps), N).
    """
    unet = model.unet
    out = np.zeros((len(timesteps), len(samples)))
    with eval_mode(unet):
        for sl in batches(len(samples)):
            x0, c = samples.latents[sl].float(), samples.cond[sl]
            for i, t in enumerate(timesteps):
                out[i, sl] = -eps_theta(unet, x0, t, c).abs().pow(p).flatten(1).sum(1).double().numpy()
    return out


def score_norm_attack(
    model: DiffusionModel,
    sets: AttackSets,
    timesteps: Sequence[int],
    p: float = 4.0,
    sign_from_aux: bool = True,
    key: str = "evaluation.score_norm_timesteps",
) -> AttackResult:
    """SimA with t picked on D_aux."""
    return timestep_attack(score_norm_scores, model, sets, timesteps, p, sign_from_aux, key)


@ATTACKS.register(
    "score-norm",
    reference="Rao et al., arXiv 2509.25003 (SimA)",
    description="−‖ε_θ(x₀, t)‖₄⁴ at the clean latent; t and sign picked on aux",
)
def score_norm(ctx: AttackContext) -> AttackResult:
    cfg = ctx.cfg
    return score_norm_attack(
        ctx.target,
        ctx.sets,
        cfg.score_norm_timesteps,
        cfg.score_norm_p,
        sign_from_aux=cfg.diffusion_attack_sign == "from-aux",
    )
