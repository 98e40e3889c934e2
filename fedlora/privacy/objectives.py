"""Local training objectives, pluggable into the client trainer: LoRA, MP-LoRA, SMP-LoRA.

An objective sees the member batch's per-element squared error map (eps - eps_theta)^2 from
the step's single UNet forward pass. L_ada is its mean and the proxy attacker's input is the
map itself, so MP-/SMP-LoRA need no second forward pass with gradient (the released code
runs two, with independent (t, eps) draws). Anything an objective keeps across rounds (the
proxy attacker and its optimiser) goes through ``state_dict``/``load_state_dict``.
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch

from ..config import PrivacyConfig, TrainConfig
from .attacker import ProxyAttacker, member_cross_entropy

# (k) -> (loss maps of k members and k non-members from the aux sets under no_grad, labels)
AttackBatchFn = Callable[[int], tuple[torch.Tensor, torch.Tensor]]


class Objective(Protocol):
    name: str

    def loss(self, err: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Scalar loss to minimise (w.r.t. LoRA) from the (B, C, h, w) error map, plus metrics."""

    def after_step(self) -> dict[str, float]:
        """Work done after each LoRA step (e.g. an attacker update); returns metrics."""

    def state_dict(self) -> dict[str, torch.Tensor]: ...

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None: ...


def mp_lora_loss(l_ada: torch.Tensor, gain: torch.Tensor, mi_lambda: float) -> torch.Tensor:
    """MP-LoRA (paper eq. 6): L_ada + lambda * G."""
    return l_ada + mi_lambda * gain


def smp_lora_loss(l_ada: torch.Tensor, gain: torch.Tensor, mi_lambda: float, stabilizer: float) -> torch.Tensor:
    """SMP-LoRA (paper eq. 10): L_ada / (1 - lambda * G + delta); G <= 0 keeps the denominator >= 1 + delta."""
    return l_ada / (1.0 - mi_lambda * gain + stabilizer)


class LoraObjective:
    """Plain LoRA: L_ada, the mean squared noise-prediction error."""

    name = "lora"

    def loss(self, err: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        loss = err.mean()
        return loss, {"loss_ada": float(loss.detach())}

    def after_step(self) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state:
            raise ValueError(f"plain LoRA keeps no state, got keys {sorted(state)[:3]}")


class MembershipPrivateObjective:
    """MP-LoRA or SMP-LoRA against this client's own proxy attacker h_omega.

    G is the attacker's mean log P(member) on the current member batch (its CE negated), with
    the attacker fixed; after each LoRA step the attacker takes ``attacker_steps`` CE steps on
    balanced batches from D^m_aux and D^nm_aux (UNet under no_grad).
    """

    def __init__(self, method: str, privacy: PrivacyConfig, attacker: ProxyAttacker, attack_batch: AttackBatchFn):
        if method not in ("mp-lora", "smp-lora"):
            raise ValueError(f"method {method!r} is not a membership-private objective")
        self.name = method
        self.privacy = privacy
        self.attacker = attacker
        self.attack_batch = attack_batch

    def loss(self, err: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        l_ada = err.mean()
        gain = -member_cross_entropy(self.attacker.model, err)
        p = self.privacy
        if self.name == "mp-lora":
            loss = mp_lora_loss(l_ada, gain, p.mi_lambda)
        else:
            loss = smp_lora_loss(l_ada, gain, p.mi_lambda, p.stabilizer)
        return loss, {"loss_ada": float(l_ada.detach()), "mi_gain": float(gain.detach())}

    def after_step(self) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for _ in range(self.privacy.attacker_steps):
            maps, labels = self.attack_batch(self.privacy.attacker_batch_size)
            metrics = self.attacker.step(maps, labels)
        return metrics

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.attacker.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.attacker.load_state_dict(state)


def build_objective(
    train: TrainConfig,
    privacy: PrivacyConfig | None = None,
    feature_size: int | None = None,
    attack_batch: AttackBatchFn | None = None,
    seed: int = 0,
) -> Objective:
    """The objective ``train.method`` names; MP-/SMP-LoRA need the attack-batch source."""
    if train.method == "lora":
        return LoraObjective()
    if privacy is None or feature_size is None or attack_batch is None:
        raise ValueError(f"train.method = {train.method!r} needs privacy settings, the loss-map size and aux batches")
    attacker = ProxyAttacker(
        feature_size,
        lr=privacy.attacker_learning_rate,
        weight_decay=privacy.attacker_weight_decay,
        dropout=privacy.attacker_dropout,
        seed=seed,
    )
    return MembershipPrivateObjective(train.method, privacy, attacker, attack_batch)
