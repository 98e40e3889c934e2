"""SimA's score norm (Rao et al., arXiv 2509.25003): at one timestep, over several, and calibrated."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ...registry import ATTACKS
from .base import AttackContext, AttackResult, AttackSets, SampleSet
from .diffusion import (
    DiffusionModel,
    Reference,
    batches,
    device_of,
    eps_theta,
    eval_mode,
    host_scores,
    multi_timestep_attack,
    timestep_attack,
)

KEY = "evaluation.score_norm_timesteps"


@torch.no_grad()
def score_norm_scores(
    model: DiffusionModel, samples: SampleSet, timesteps: Sequence[int], p: float = 4.0
) -> np.ndarray:
    """−‖ε_θ(x_0, t)‖_p^p at the clean latent, no added noise.

    The denoiser points toward a kernel-weighted mean of nearby training samples, so its norm is
    small on a training sample. One query per t; returns (len(timesteps), N).
    """
    unet = model.unet
    device = device_of(unet)[0]
    out = np.zeros((len(timesteps), len(samples)))
    with eval_mode(unet):
        for sl in batches(len(samples)):
            x0, c = samples.latents[sl].float().to(device), samples.cond[sl]
            for i, t in enumerate(timesteps):
                out[i, sl] = host_scores(-eps_theta(unet, x0, t, c).abs().pow(p).flatten(1).sum(1))
    return out


def score_norm_attack(
    model: DiffusionModel,
    sets: AttackSets,
    timesteps: Sequence[int],
    p: float = 4.0,
    sign_from_aux: bool = True,
    key: str = KEY,
    reference: Reference | None = None,
) -> AttackResult:
    """SimA with t picked on D_aux."""
    return timestep_attack(score_norm_scores, model, sets, timesteps, p, sign_from_aux, key, reference)


def _from_aux(ctx: AttackContext) -> bool:
    return ctx.cfg.diffusion_attack_sign == "from-aux"


@ATTACKS.register(
    "score-norm",
    reference="Rao et al., arXiv 2509.25003 (SimA)",
    description="−‖ε_θ(x₀, t)‖₄⁴ at the clean latent; t and sign picked on aux",
)
def score_norm(ctx: AttackContext) -> AttackResult:
    return score_norm_attack(ctx.target, ctx.sets, ctx.cfg.score_norm_timesteps, ctx.cfg.score_norm_p, _from_aux(ctx))


@ATTACKS.register(
    "score-norm-multi",
    reference="Rao et al., arXiv 2509.25003 (SimA over several timesteps)",
    description="SimA's norm summed over a set of timesteps (standardised on aux), the set grown greedily by aux AUC",
)
def score_norm_multi(ctx: AttackContext) -> AttackResult:
    cfg = ctx.cfg
    return multi_timestep_attack(
        score_norm_scores, ctx.target, ctx.sets, cfg.score_norm_timesteps, cfg.score_norm_p, _from_aux(ctx), KEY
    )


@ATTACKS.register(
    "score-norm-calibrated",
    reference="Rao et al., arXiv 2509.25003; Watson et al., ICLR 2022 (calibration)",
    description="SimA's norm under the audited model minus under the public base model; t and sign picked on aux",
)
def score_norm_calibrated(ctx: AttackContext) -> AttackResult:
    cfg = ctx.cfg
    return score_norm_attack(
        ctx.target,
        ctx.sets,
        cfg.score_norm_timesteps,
        cfg.score_norm_p,
        _from_aux(ctx),
        reference=ctx.need_reference("score-norm-calibrated"),
    )
