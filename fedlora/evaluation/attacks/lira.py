"""LiRA, offline variant (Carlini et al., S&P 2022), with shadow LoRA fine-tunes.

K shadow LoRAs are trained from the public base on random halves of D_aux (each aux sample is
in exactly K/2 of them), with the audited run's recipe (``train.*``, ``federation.rounds`` ×
``train.local_steps`` steps). A sample's score under a model is its log denoising loss on fixed
(t, ε) draws. Offline LiRA needs only the shadows a sample was *out* of: the statistic is how
far below the out-shadows' mean the audited model puts it, in units of their (pooled) spread.
D_te samples are out of every shadow; an aux sample is judged by its K/2 out-shadows, which
fixes the threshold on aux. Opt-in: it costs K extra fine-tunes per audited view.
"""

from __future__ import annotations

import numpy as np
import torch

from ...registry import ATTACKS
from ..leakage import best_threshold
from .base import AttackContext, AttackResult, Samples, SampleSet, attack_result, labelled

SEED_OFFSET = 17  # this attack's shadows and draws: the audit seed + 17


def balanced_halves(n: int, shadows: int, seed: int) -> np.ndarray:
    """(shadows, n) membership of n samples in the shadows' training sets, each sample in exactly half."""
    rng = np.random.default_rng(seed)
    inside = np.zeros((shadows, n), dtype=bool)
    for i in range(n):
        inside[rng.choice(shadows, shadows // 2, replace=False), i] = True
    return inside


def offline_lira_statistic(target: np.ndarray, shadow: np.ndarray, out: np.ndarray) -> np.ndarray:
    """(μ_out − target) / σ per sample: ``shadow`` (K, N) log losses, ``out`` (K, N) which shadows count.

    σ is pooled over every out-observation (LiRA's fixed-variance variant, robust with few shadows).
    """
    counts = out.sum(0)
    if np.any(counts < 1):
        raise ValueError("every sample needs at least one shadow it was not trained on")
    mu = np.where(out, shadow, 0.0).sum(0) / counts
    resid = np.where(out, shadow - mu, 0.0)
    sigma = float(np.sqrt((resid**2).sum() / max(1, int(out.sum()) - out.shape[1]))) + 1e-12
    return (mu - target) / sigma


def lira_attack(ctx: AttackContext) -> AttackResult:
    if ctx.shadow is None:
        raise ValueError("attack 'lira' trains shadow models, but this audit cannot train them")
    cfg, seed = ctx.cfg, ctx.seed + SEED_OFFSET
    shadows = cfg.lira_shadows
    aux, aux_member = labelled(ctx.sets.member_aux, ctx.sets.nonmember_aux)
    test, test_member = labelled(ctx.sets.member_test, ctx.sets.nonmember_test)

    def log_loss(samples: SampleSet) -> np.ndarray:
        return np.log(np.maximum(ctx.target.mean_loss(samples, cfg.loss_attack_draws, seed).cpu().numpy(), 1e-12))

    target_aux, target_test = log_loss(aux), log_loss(test)
    inside = balanced_halves(len(aux), shadows, seed)
    shadow_aux = np.zeros((shadows, len(aux)))
    shadow_test = np.zeros((shadows, len(test)))
    for k in range(shadows):
        rows = torch.from_numpy(np.flatnonzero(inside[k])).to(aux.latents.device)  # on the samples' device
        train = Samples(aux.latents[rows], aux.cond[rows])
        with ctx.shadow(train, seed + 1 + k):
            shadow_aux[k], shadow_test[k] = log_loss(aux), log_loss(test)
    both = np.concatenate([shadow_aux, shadow_test], axis=1)
    out = np.concatenate([~inside, np.ones_like(shadow_test, dtype=bool)], axis=1)
    stat = offline_lira_statistic(np.concatenate([target_aux, target_test]), both, out)
    aux_stat, test_stat = stat[: len(aux)], stat[len(aux) :]
    threshold = best_threshold(aux_stat, aux_member)
    return attack_result(
        test_stat,
        test_member,
        threshold,
        aux=(aux_stat, aux_member),
        shadows=float(shadows),
        draws=float(cfg.loss_attack_draws),
        shadow_train_size=float(inside.sum(1).mean()),
    )


@ATTACKS.register(
    "lira",
    reference="Carlini et al., S&P 2022 (LiRA, offline)",
    description="offline LiRA: the audited model's log loss against Gaussian fits of shadow LoRAs trained on aux "
    "halves without the sample; opt-in (trains evaluation.lira_shadows LoRAs per audited view)",
)
def lira(ctx: AttackContext) -> AttackResult:
    return lira_attack(ctx)
