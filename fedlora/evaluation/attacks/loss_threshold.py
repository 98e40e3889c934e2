"""The loss attack: members have a lower denoising loss (Yeom et al. 2018; Matsumoto et al. 2023).

The score is the negated mean loss over ``loss_attack_draws`` (t, ε) draws; the threshold is
chosen on D_aux and applied to D_te.
"""

from __future__ import annotations

import numpy as np
import torch

from ...privacy.attacker import membership_labels
from ...registry import ATTACKS
from ..leakage import best_threshold
from .base import AttackContext, AttackResult, AttackSets, AttackTarget, SampleSet, attack_result

SEED_OFFSET = 7  # this attack's own draws: the audit seed + 7


def loss_threshold_attack(model: AttackTarget, sets: AttackSets, draws: int, seed: int) -> AttackResult:
    def scores(members: SampleSet, nonmembers: SampleSet, s: int) -> tuple[np.ndarray, np.ndarray]:
        loss = torch.cat([model.mean_loss(members, draws, s), model.mean_loss(nonmembers, draws, s + 1)])
        return -loss.cpu().numpy(), membership_labels(len(members), len(nonmembers)).numpy().astype(bool)

    aux_scores, aux_member = scores(sets.member_aux, sets.nonmember_aux, seed)
    test_scores, test_member = scores(sets.member_test, sets.nonmember_test, seed + 2)
    threshold = best_threshold(aux_scores, aux_member)
    return attack_result(test_scores, test_member, threshold, draws=float(draws))


@ATTACKS.register(
    "loss-threshold",
    reference="Yeom et al., CSF 2018; Matsumoto et al., SPW 2023",
    description="mean denoising loss over several (t, ε) draws; threshold chosen on D_aux",
)
def loss_threshold(ctx: AttackContext) -> AttackResult:
    return loss_threshold_attack(ctx.target, ctx.sets, ctx.cfg.loss_attack_draws, ctx.seed + SEED_OFFSET)
