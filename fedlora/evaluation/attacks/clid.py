"""CLiD, conditional likelihood discrepancy (Zhai et al., NeurIPS 2024).

A text-to-image model fine-tuned on (image, caption) pairs learns the pair: a member's
denoising loss drops far more with its caption than without one. The score is the loss with
the empty caption minus the loss with the sample's caption, on the same (t, ε) draws.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ...registry import ATTACKS
from .base import AttackContext, AttackResult, AttackSets, AttackTarget, SampleSet
from .diffusion import Reference, alphas, batches, device_of, eval_mode, host_scores, noised, timestep_attack

KEY = "evaluation.clid_timesteps"
SEED_OFFSET = 13  # this attack's own ε draws: the audit seed + 13


def _loss(unet: object, x_t: torch.Tensor, t: int, cond: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    device, dtype = device_of(unet)
    ts = torch.full((len(x_t),), int(t), dtype=torch.long, device=device)
    pred = unet(x_t.to(device, dtype), ts, encoder_hidden_states=cond.to(device, dtype)).sample  # type: ignore[operator]
    return (pred.float() - eps.to(device)).pow(2).flatten(1).mean(1)


@torch.no_grad()
def clid_scores(model: AttackTarget, samples: SampleSet, timesteps: Sequence[int], draws: int, seed: int) -> np.ndarray:
    """Mean over ``draws`` ε of L(x_t, t, ∅) − L(x_t, t, c), per timestep: (len(timesteps), N).

    ε is seeded by (seed, t, draw) and shared by both captions, so the difference isolates the
    caption's effect; the same seed gives the same draws under any model (calibration).
    """
    unet, a = model.unet, alphas(model)
    device = device_of(unet)[0]
    out = np.zeros((len(timesteps), len(samples)))
    with eval_mode(unet):
        for i, t in enumerate(timesteps):
            gen = torch.Generator().manual_seed(seed * 1009 + int(t))  # CPU draws: the same ε on any device
            noise = torch.randn((draws, *samples.latents.shape), generator=gen)
            for sl in batches(len(samples)):
                x0, c = samples.latents[sl].float().to(device), samples.cond[sl]
                null = model.empty_caption(len(x0))
                total = torch.zeros(len(x0), dtype=torch.float64, device=device)
                for eps in noise[:, sl].to(device):
                    x_t = noised(a, x0, eps, int(t))
                    total += (_loss(unet, x_t, t, null, eps) - _loss(unet, x_t, t, c, eps)).double()
                out[i, sl] = host_scores(total / draws)
    return out


def clid_attack(
    model: AttackTarget,
    sets: AttackSets,
    timesteps: Sequence[int],
    draws: int,
    seed: int,
    sign_from_aux: bool = True,
    reference: Reference | None = None,
) -> AttackResult:
    """t (and sign) picked on D_aux like PIA's; ``reference``: minus the base model's discrepancy."""

    def scores(m: object, samples: SampleSet, ts: Sequence[int], p: None) -> np.ndarray:
        return clid_scores(model, samples, ts, draws, seed)

    res = timestep_attack(scores, model, sets, timesteps, None, sign_from_aux, KEY, reference, magnitude=False)
    res.details["draws"] = float(draws)
    return res


def _run(ctx: AttackContext, reference: Reference | None) -> AttackResult:
    cfg = ctx.cfg
    from_aux = cfg.diffusion_attack_sign == "from-aux"
    return clid_attack(
        ctx.target, ctx.sets, cfg.clid_timesteps, cfg.clid_draws, ctx.seed + SEED_OFFSET, from_aux, reference
    )


@ATTACKS.register(
    "clid",
    reference="Zhai et al., NeurIPS 2024 (CLiD)",
    description="denoising loss with the empty caption minus with the sample's caption, same (t, ε); t and sign "
    "picked on aux",
)
def clid(ctx: AttackContext) -> AttackResult:
    return _run(ctx, None)


@ATTACKS.register(
    "clid-calibrated",
    reference="Zhai et al., NeurIPS 2024; Watson et al., ICLR 2022 (calibration)",
    description="CLiD's discrepancy under the audited model minus under the public base model",
)
def clid_calibrated(ctx: AttackContext) -> AttackResult:
    return _run(ctx, ctx.need_reference("clid-calibrated"))
