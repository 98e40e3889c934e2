"""The loss attack: members have a lower denoising loss (Yeom et al. 2018; Matsumoto et al. 2023).

The score is the negated mean loss over ``loss_attack_draws`` (t, ε) draws; the threshold is
chosen on D_aux and applied to D_te. The calibrated variant scores the base model's loss minus
the audited model's on the same draws: how much *this* model lowered the sample's loss.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import numpy as np

from ...privacy.attacker import membership_labels
from ...registry import ATTACKS
from ..leakage import best_threshold
from .base import AttackContext, AttackResult, AttackSets, AttackTarget, SampleSet, attack_result, calibrated

SEED_OFFSET = 7  # this attack's own draws: the audit seed + 7


def loss_threshold_attack(
    model: AttackTarget,
    sets: AttackSets,
    draws: int,
    seed: int,
    reference: Callable[[], AbstractContextManager[Any]] | None = None,
) -> AttackResult:
    def losses(samples: SampleSet, s: int) -> np.ndarray:
        return model.mean_loss(samples, draws, s).cpu().numpy()

    loss = calibrated(losses, reference) if reference else losses

    def scores(members: SampleSet, nonmembers: SampleSet, s: int) -> tuple[np.ndarray, np.ndarray]:
        both = np.concatenate([loss(members, s), loss(nonmembers, s + 1)])
        return -both, membership_labels(len(members), len(nonmembers)).numpy().astype(bool)

    aux_scores, aux_member = scores(sets.member_aux, sets.nonmember_aux, seed)
    test_scores, test_member = scores(sets.member_test, sets.nonmember_test, seed + 2)
    threshold = best_threshold(aux_scores, aux_member)
    return attack_result(test_scores, test_member, threshold, aux=(aux_scores, aux_member), draws=float(draws))


@ATTACKS.register(
    "loss-threshold",
    reference="Yeom et al., CSF 2018; Matsumoto et al., SPW 2023",
    description="mean denoising loss over several (t, ε) draws; threshold chosen on D_aux",
)
def loss_threshold(ctx: AttackContext) -> AttackResult:
    return loss_threshold_attack(ctx.target, ctx.sets, ctx.cfg.loss_attack_draws, ctx.seed + SEED_OFFSET)


@ATTACKS.register(
    "loss-calibrated",
    reference="Watson et al., ICLR 2022 (difficulty calibration); Carlini et al., S&P 2022 (offline LiRA)",
    description="the public base model's mean denoising loss minus the audited model's, on the same (t, ε) draws; "
    "threshold chosen on D_aux",
)
def loss_calibrated(ctx: AttackContext) -> AttackResult:
    return loss_threshold_attack(
        ctx.target, ctx.sets, ctx.cfg.loss_attack_draws, ctx.seed + SEED_OFFSET, ctx.need_reference("loss-calibrated")
    )
