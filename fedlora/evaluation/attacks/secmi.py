"""SecMI_stat, the DDIM t-error (Duan et al., ICML 2023)."""

from __future__ import annotations

import numpy as np
import torch

from ...registry import ATTACKS
from ..leakage import best_threshold
from .base import AttackContext, AttackResult, AttackSets, SampleSet, attack_result, labelled
from .diffusion import DiffusionModel, alphas, auc, batches, eps_theta, eval_mode, num_timesteps, oriented


def ddim_step(x: torch.Tensor, eps: torch.Tensor, alpha_from: float, alpha_to: float) -> torch.Tensor:
    """One deterministic (eta = 0) DDIM move from noise level ᾱ_from to ᾱ_to.

    Upwards (ᾱ_to < ᾱ_from) it is a DDIM inversion step, downwards a denoising step; with the
    same ε both ways it is its own inverse, so SecMI's t-error measures only how ε_θ changes.
    """
    x0_pred = (x - (1.0 - alpha_from) ** 0.5 * eps) / alpha_from**0.5
    return alpha_to**0.5 * x0_pred + (1.0 - alpha_to) ** 0.5 * eps


@torch.no_grad()
def secmi_scores(model: DiffusionModel, samples: SampleSet, t_sec: int = 100, k: int = 10) -> np.ndarray:
    """−‖x̃_{t_sec} − x_{t_sec}‖² (the negated t-error).

    x_0 is DDIM-inverted to x_{t_sec} in steps of k, moved one more step up to t_sec + k and
    denoised back; members reconstruct better. The eta = 0 DDIM steps are written from ᾱ here
    (``ddim_step``), not taken from a diffusers scheduler, so that the timestep grid and the
    inversion direction are explicit. Returns (N,); t_sec/k + 2 queries per sample.
    """
    unet, a = model.unet, alphas(model)
    grid = list(range(0, t_sec, k)) + [t_sec]
    up = t_sec + k
    out = np.zeros(len(samples))
    with eval_mode(unet):
        for sl in batches(len(samples)):
            x, c = samples.latents[sl].float(), samples.cond[sl]
            for t_from, t_to in zip(grid[:-1], grid[1:]):
                x = ddim_step(x, eps_theta(unet, x, t_from, c), float(a[t_from]), float(a[t_to]))
            x_up = ddim_step(x, eps_theta(unet, x, t_sec, c), float(a[t_sec]), float(a[up]))
            x_back = ddim_step(x_up, eps_theta(unet, x_up, up, c), float(a[up]), float(a[t_sec]))
            out[sl] = -(x_back - x).pow(2).flatten(1).sum(1).double().numpy()
    return out


def secmi_attack(
    model: DiffusionModel, sets: AttackSets, t_sec: int = 100, k: int = 10, sign_from_aux: bool = True
) -> AttackResult:
    """The t-error thresholded on D_aux."""
    n = num_timesteps(model)
    if k < 1 or t_sec < k or t_sec + k >= n:
        raise ValueError(
            f"evaluation.secmi_t = {t_sec} and evaluation.secmi_k = {k} need 1 <= k <= secmi_t and "
            f"secmi_t + secmi_k < the scheduler's num_train_timesteps = {n}"
        )
    aux, aux_member = labelled(sets.member_aux, sets.nonmember_aux)
    aux_scores = secmi_scores(model, aux, t_sec, k)
    aux_auc = auc(aux_scores, aux_member)
    _, sign = oriented([aux_auc], sign_from_aux)
    threshold = best_threshold(sign * aux_scores, aux_member)
    test, test_member = labelled(sets.member_test, sets.nonmember_test)
    return attack_result(
        sign * secmi_scores(model, test, t_sec, k),
        test_member,
        threshold,
        t=float(t_sec),
        k=float(k),
        sign=sign,
        aux_auc=aux_auc if sign > 0 else 1 - aux_auc,
    )


@ATTACKS.register(
    "secmi",
    reference="Duan et al., ICML 2023",
    description="−t-error of a deterministic DDIM inversion to secmi_t in steps of secmi_k and one step "
    "up and back; sign and threshold picked on aux",
)
def secmi(ctx: AttackContext) -> AttackResult:
    cfg = ctx.cfg
    return secmi_attack(
        ctx.target, ctx.sets, cfg.secmi_t, cfg.secmi_k, sign_from_aux=cfg.diffusion_attack_sign == "from-aux"
    )
