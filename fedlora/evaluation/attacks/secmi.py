"""SecMI_stat, the DDIM t-error (Duan et al., ICML 2023)."""

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
    num_timesteps,
    timestep_attack,
)

KEY = "evaluation.secmi_timesteps"


def ddim_step(x: torch.Tensor, eps: torch.Tensor, alpha_from: float, alpha_to: float) -> torch.Tensor:
    """One deterministic (eta = 0) DDIM move from noise level ᾱ_from to ᾱ_to.

    Upwards (ᾱ_to < ᾱ_from) it is a DDIM inversion step, downwards a denoising step; with the
    same ε both ways it is its own inverse, so SecMI's t-error measures only how ε_θ changes.
    """
    x0_pred = (x - (1.0 - alpha_from) ** 0.5 * eps) / alpha_from**0.5
    return alpha_to**0.5 * x0_pred + (1.0 - alpha_to) ** 0.5 * eps


def secmi_grid(t_sec: int, k: int) -> tuple[list[int], int]:
    """The released code's stepping: invert 0 → t_e in steps of k, t_e = the last multiple of k
    below t_sec (t_sec − k when k divides it), then one step up to t_e + k and back to t_e."""
    grid = list(range(0, t_sec, k))
    return grid, grid[-1] + k


@torch.no_grad()
def secmi_scores(model: DiffusionModel, samples: SampleSet, t_sec: int = 100, k: int = 10) -> np.ndarray:
    """−‖x̃_{t_e} − x_{t_e}‖² (the negated t-error at t_e, see ``secmi_grid``).

    x_0 is DDIM-inverted to x_{t_e} in steps of k, moved one step up to t_e + k (= t_sec when k
    divides t_sec) and denoised back; members reconstruct better. As the released code does
    (``get_intermediate_results``: targets ``range(0, t_sec, k)[1:]``, then t_e → t_e + k → t_e).
    The eta = 0 DDIM steps are written from ᾱ here (``ddim_step``). Returns (N,); t_e/k + 2
    queries per sample.
    """
    unet, a = model.unet, alphas(model)
    grid, up = secmi_grid(t_sec, k)
    t_e = grid[-1]
    device = device_of(unet)[0]
    out = np.zeros(len(samples))
    with eval_mode(unet):
        for sl in batches(len(samples)):
            x, c = samples.latents[sl].float().to(device), samples.cond[sl]
            for t_from, t_to in zip(grid[:-1], grid[1:]):
                x = ddim_step(x, eps_theta(unet, x, t_from, c), float(a[t_from]), float(a[t_to]))
            x_up = ddim_step(x, eps_theta(unet, x, t_e, c), float(a[t_e]), float(a[up]))
            x_back = ddim_step(x_up, eps_theta(unet, x_up, up, c), float(a[up]), float(a[t_e]))
            out[sl] = host_scores(-(x_back - x).pow(2).flatten(1).sum(1))
    return out


def secmi_table(model: DiffusionModel, samples: SampleSet, timesteps: Sequence[int], k: int) -> np.ndarray:
    """``secmi_scores`` at each candidate t_sec: (len(timesteps), N)."""
    return np.stack([secmi_scores(model, samples, int(t), k) for t in timesteps])


def secmi_attack(
    model: DiffusionModel,
    sets: AttackSets,
    timesteps: Sequence[int] = (100,),
    k: int = 10,
    sign_from_aux: bool = True,
    reference: Reference | None = None,
) -> AttackResult:
    """The t-error at the t_sec (and sign) picked on D_aux, thresholded on D_aux.

    ``reference``: the log ratio of the base model's t-error to the audited model's.
    """
    n = num_timesteps(model)
    bad = [t for t in timesteps if k < 1 or t < k or secmi_grid(int(t), k)[1] >= n]
    if bad:
        raise ValueError(
            f"evaluation.secmi_timesteps = {list(timesteps)} and evaluation.secmi_k = {k}: {bad} need "
            f"1 <= k <= t_sec and a round trip below the scheduler's num_train_timesteps = {n}"
        )

    def scores(m: DiffusionModel, samples: SampleSet, ts: Sequence[int], p: None) -> np.ndarray:
        return secmi_table(m, samples, ts, k)

    res = timestep_attack(scores, model, sets, timesteps, None, sign_from_aux, KEY, reference, magnitude=True)
    res.details.update(k=float(k), t_error_at=float(secmi_grid(int(res.details["t"]), k)[0][-1]))
    return res


def _from_aux(ctx: AttackContext) -> bool:
    return ctx.cfg.diffusion_attack_sign == "from-aux"


@ATTACKS.register(
    "secmi",
    reference="Duan et al., ICML 2023",
    description="−t-error of a deterministic DDIM inversion in steps of secmi_k up to t_sec − secmi_k, one step up "
    "and back (the released code's stepping); t_sec and sign picked on aux",
)
def secmi(ctx: AttackContext) -> AttackResult:
    return secmi_attack(ctx.target, ctx.sets, ctx.cfg.secmi_timesteps, ctx.cfg.secmi_k, _from_aux(ctx))


@ATTACKS.register(
    "secmi-calibrated",
    reference="Duan et al., ICML 2023; Watson et al., ICLR 2022 (calibration)",
    description="SecMI's t-error, log ratio of the public base model's to the audited model's; t_sec and sign "
    "picked on aux",
)
def secmi_calibrated(ctx: AttackContext) -> AttackResult:
    cfg = ctx.cfg
    reference = ctx.need_reference("secmi-calibrated")
    return secmi_attack(ctx.target, ctx.sets, cfg.secmi_timesteps, cfg.secmi_k, _from_aux(ctx), reference)
