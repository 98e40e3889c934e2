"""The shared machinery of MP-LoRA and SMP-LoRA: each client's own proxy attacker h_ω.

G is the attacker's mean log P(member) on the current member batch (its CE negated), with the
attacker fixed; after each LoRA step the attacker takes ``privacy.attacker_steps`` CE steps on
balanced batches from D^m_aux and D^nm_aux (UNet under no_grad). After the round it is scored
on the client's own D_te.

What the attacker sees (``privacy.attacker_features``): the error map (ε − ε_θ)², as the paper
has it, or the *calibrated* map, the adapted model's error minus the base model's on the same
(t, ε) — what the strongest attacks compare — or one number per sample, the *relative change of its
loss* against the base model's on the same draws (``calibrated-loss``: the loss-calibrated attack's
score). ``privacy.attacker_feature_draws`` > 1 averages over that many (t, ε) draws, like the
evaluation's learned MLP and loss attacks.

Why the scalar (a hypothesis the search in docs/results.md tests): a proxy near chance on 16,384-dim
single-draw maps still has large, arbitrary input gradients (it fits noise), and SMP-LoRA follows
them: with the calibrated map the members' *and* non-members' losses rose together. On one
well-scaled number a proxy that cannot separate members should be nearly flat, so its push fades;
one that can separates them by the signal the strongest attacks use, and its push moves the
members' loss toward the non-members'.
"""

from __future__ import annotations

from abc import abstractmethod

import torch

from ...config import ExperimentConfig, PrivacyConfig
from ...device import to_float
from ..attacker import ProxyAttacker, member_cross_entropy
from .base import MembershipBatches, Objective, StepBatch

ERROR, CALIBRATED, CALIBRATED_LOSS = "error", "calibrated", "calibrated-loss"  # privacy.attacker_features


def relative_loss_change(adapted: list[torch.Tensor], base: list[torch.Tensor]) -> torch.Tensor:
    """(B, 1): (Σ_draws l − Σ_draws l_base) / Σ_draws l_base per sample, from each draw's (B, C, h, w) maps."""
    ell = torch.stack([a.mean(dim=(1, 2, 3)) for a in adapted]).sum(0)
    ell_base = torch.stack([b.mean(dim=(1, 2, 3)) for b in base]).sum(0)
    return ((ell - ell_base) / ell_base.clamp_min(1e-12)).unsqueeze(1)


def attacker_input_size(kind: str, map_size: int) -> int:
    """How many numbers the proxy attacker sees per sample."""
    return 1 if kind == CALIBRATED_LOSS else map_size


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
            attacker_input_size(p.attacker_features, feature_size),
            lr=p.attacker_learning_rate,
            weight_decay=p.attacker_weight_decay,
            dropout=p.attacker_dropout,
            seed=seed,
            device=batches.device,
        )
        return cls(p, attacker, batches)

    @abstractmethod
    def combine(self, l_ada: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
        """The loss from L_ada and G (≤ 0)."""

    def features(self, err: torch.Tensor, batch: StepBatch | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(L_ada, the attacker's input) of the member batch, over ``attacker_feature_draws`` draws."""
        p = self.privacy
        simple = p.attacker_features == ERROR and p.attacker_feature_draws == 1
        if simple:
            return err.mean(), err
        if batch is None:
            raise ValueError("calibrated or multi-draw attacker features need the step's batch")
        draws = [(err, batch.noise, batch.t)] + [batch.redraw() for _ in range(p.attacker_feature_draws - 1)]
        l_ada = torch.stack([e.mean() for e, _, _ in draws]).mean()
        if p.attacker_features == CALIBRATED_LOSS:
            return l_ada, relative_loss_change([e for e, _, _ in draws], [batch.base_error(n, t) for _, n, t in draws])
        maps = [e - batch.base_error(n, t) if p.attacker_features == CALIBRATED else e for e, n, t in draws]
        return l_ada, torch.stack(maps).mean(0)

    def loss(self, err: torch.Tensor, batch: StepBatch | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        l_ada, seen = self.features(err, batch)
        gain = -member_cross_entropy(self.attacker.model, seen)
        return self.combine(l_ada, gain), {"loss_ada": to_float(l_ada.detach()), "mi_gain": to_float(gain.detach())}

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
