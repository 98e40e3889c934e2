"""PIA, proximal initialisation (Kong et al., ICLR 2024)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ...registry import ATTACKS
from .base import AttackContext, AttackResult, AttackSets, SampleSet
from .diffusion import (
    DiffusionModel,
    Reference,
    alphas,
    batches,
    device_of,
    eps_theta,
    eval_mode,
    host_scores,
    noised,
    timestep_attack,
)


@torch.no_grad()
def pia_scores(model: DiffusionModel, samples: SampleSet, timesteps: Sequence[int], p: float = 4.0) -> np.ndarray:
    """−Σ|ε_θ(x_t, t) − ε_0|^p with ε_0 = ε_θ(x_0, 0), x_t built from ε_0.

    A member's x_0 sits where the model's deterministic trajectory is self-consistent, so the
    noise it predicts at t matches the noise it proposed at 0. Returns (len(timesteps), N);
    ε_0 is computed once for all t (2 queries per t, as in the paper).
    """
    unet, a = model.unet, alphas(model)
    device = device_of(unet)[0]
    out = np.zeros((len(timesteps), len(samples)))
    with eval_mode(unet):
        for sl in batches(len(samples)):
            x0, c = samples.latents[sl].float().to(device), samples.cond[sl]
            eps0 = eps_theta(unet, x0, 0, c)
            for i, t in enumerate(timesteps):
                err = eps_theta(unet, noised(a, x0, eps0, t), t, c) - eps0
                out[i, sl] = host_scores(-err.abs().pow(p).flatten(1).sum(1))
    return out


def pia_attack(
    model: DiffusionModel,
    sets: AttackSets,
    timesteps: Sequence[int],
    p: float = 4.0,
    sign_from_aux: bool = True,
    key: str = "evaluation.pia_timesteps",
    reference: Reference | None = None,
) -> AttackResult:
    """PIA with t picked on D_aux, not the repo's best-on-test t."""
    return timestep_attack(pia_scores, model, sets, timesteps, p, sign_from_aux, key, reference)


@ATTACKS.register(
    "pia",
    reference="Kong et al., ICLR 2024",
    description="−Σ|ε_θ(x_t, t) − ε₀|⁴ with ε₀ = ε_θ(x₀, 0) and x_t built from ε₀; t and sign picked on aux",
)
def pia(ctx: AttackContext) -> AttackResult:
    return pia_attack(
        ctx.target, ctx.sets, ctx.cfg.pia_timesteps, sign_from_aux=ctx.cfg.diffusion_attack_sign == "from-aux"
    )


@ATTACKS.register(
    "pia-calibrated",
    reference="Kong et al., ICLR 2024; Watson et al., ICLR 2022 (calibration)",
    description="PIA's score under the audited model minus under the public base model; t and sign picked on aux",
)
def pia_calibrated(ctx: AttackContext) -> AttackResult:
    return pia_attack(
        ctx.target,
        ctx.sets,
        ctx.cfg.pia_timesteps,
        sign_from_aux=ctx.cfg.diffusion_attack_sign == "from-aux",
        reference=ctx.need_reference("pia-calibrated"),
    )
