"""The shared machinery of MP-LoRA and SMP-LoRA: each client's own proxy attacker h_ω.

G is the attacker's mean log P(member) on the current member batch (its CE negated), with the
attacker fixed; after each LoRA step the attacker takes ``privacy.attacker_steps`` CE steps on
balanced batches from D^m_aux and D^nm_aux (UNet under no_grad). After the round it is scored
on the client's own D_te.
"""

from __future__ import annotations

from abc import abstractmethod

import torch

from ...config import ExperimentConfig, PrivacyConfig
from ..attacker import ProxyAttacker, member_cross_entropy
from .base import MembershipBatches, Objective


class ProxyAttackerObjective(Objective):
    """L_ada combined with the proxy attacker's gain G by ``combine`` (one subclass per method)."""

    needs_aux = True

    def __init__(self, privacy: PrivacyConfig, attacker: ProxyAttacker, batches: MembershipBatches):
        self.privacy = privacy
        self.attacker = attacker
        self.batches = batches

    @classmethod
    def build(cls, cfg: ExperimentConfig, feature_size: int, batches: MembershipBatches | None, seed: int) -> Objective:
        if batches is None:
            raise ValueError(f"train.method = {cfg.train.method!r} needs the client's aux and test loss maps")
        p = cfg.privacy
        attacker = ProxyAttacker(
            feature_size,
            lr=p.attacker_learning_rate,
            weight_decay=p.attacker_weight_decay,
            dropout=p.attacker_dropout,
            seed=seed,
        )
        return cls(p, attacker, batches)

    @abstractmethod
    def combine(self, l_ada: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
        """The loss from L_ada and G (≤ 0)."""

    def loss(self, err: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        l_ada = err.mean()
        gain = -member_cross_entropy(self.attacker.model, err)
        return self.combine(l_ada, gain), {"loss_ada": float(l_ada.detach()), "mi_gain": float(gain.detach())}

    def after_step(self) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for _ in range(self.privacy.attacker_steps):
            maps, labels = self.batches.aux(self.privacy.attacker_batch_size)
            metrics = self.attacker.step(maps, labels)
        return metrics

    def after_round(self) -> dict[str, float]:
        maps, labels = self.batches.test()
        return {
            "attacker_test_acc": self.attacker.accuracy(maps, labels),
            "attacker_updates": float(self.attacker.updates),
        }

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.attacker.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.attacker.load_state_dict(state)
