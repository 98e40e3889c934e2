"""The shared machinery of MP-LoRA and SMP-LoRA: each client's own proxy attacker h_ω.

G is the attacker's mean log P(member) on the current member batch (its CE negated), with the
attacker fixed; after each LoRA step the attacker takes ``privacy.attacker_steps`` CE steps on
balanced batches from D^m_aux and D^nm_aux (UNet under no_grad). After the round it is scored
on the client's own D_te.

What the attacker sees (``privacy.attacker_features``): the error map (ε − ε_θ)², as the paper
has it, or the *calibrated* map, the adapted model's error minus the base model's on the same
(t, ε) — what the strongest attacks compare — or one number per sample, the *relative change of its
loss* against the base model's on the same draws (``calibrated-loss``: the loss-calibrated attack's
score), or that change per timestep band over many fixed draws (``calibrated-profile``,
``fedlora/privacy/loss_profile.py``). ``privacy.attacker_feature_draws`` > 1 averages over that many
(t, ε) draws, like the evaluation's learned MLP and loss attacks.

Why (the search in docs/results.md tests it): a proxy near chance on single-draw maps still has
large, arbitrary input gradients (it fits noise), and SMP-LoRA follows them: with the calibrated map
the members' *and* non-members' losses rose together, and the proxy's own test accuracy stayed at
0.5 while the evaluation's loss attack, averaging 32 draws, separated members perfectly. A proxy on
the profile is as sharp as that attack, so its push goes where the signal is; being sharp, it pushes
hard, which ``privacy.max_ascent`` bounds (``profile_loss``). Even bounded, the push moves the model for
everyone; ``privacy.base_anchor`` weighs a trust region around the base model (``base_anchor``) into L_ada,
and with it the members' and non-members' losses stay at the base model's while the attacks fall to chance.
"""

from __future__ import annotations

from abc import abstractmethod

import torch

from ...config import ExperimentConfig, PrivacyConfig
from ...device import to_float
from ...errors import ConfigError
from ..attacker import ProxyAttacker, member_cross_entropy
from .base import MembershipBatches, Objective, StepBatch

# privacy.attacker_features
ERROR, CALIBRATED, CALIBRATED_LOSS, CALIBRATED_PROFILE = "error", "calibrated", "calibrated-loss", "calibrated-profile"


def relative_loss_change(adapted: list[torch.Tensor], base: list[torch.Tensor]) -> torch.Tensor:
    """(B, 1): (Σ_draws l − Σ_draws l_base) / Σ_draws l_base per sample, from each draw's (B, C, h, w) maps."""
    ell = torch.stack([a.mean(dim=(1, 2, 3)) for a in adapted]).sum(0)
    ell_base = torch.stack([b.mean(dim=(1, 2, 3)) for b in base]).sum(0)
    return ((ell - ell_base) / ell_base.clamp_min(1e-12)).unsqueeze(1)


def attacker_input_size(privacy: PrivacyConfig, map_size: int) -> int:
    """How many numbers the proxy attacker sees per sample."""
    if privacy.attacker_features == CALIBRATED_PROFILE:
        return privacy.attacker_profile_bands
    return 1 if privacy.attacker_features == CALIBRATED_LOSS else map_size


class ProxyAttackerObjective(Objective):
    """L_ada combined with the proxy attacker's gain G by ``combine`` (one subclass per method)."""

    needs_aux = True

    def __init__(self, privacy: PrivacyConfig, attacker: ProxyAttacker, batches: MembershipBatches):
        self.privacy = privacy
        self.attacker = attacker
        self.batches = batches
        self.steps = 0  # LoRA steps taken this round

    @classmethod
    def validate(cls, cfg: ExperimentConfig) -> None:
        p = cfg.privacy
        if p.max_ascent > 0 and p.attacker_features != CALIBRATED_PROFILE:
            raise ConfigError(
                f"privacy.max_ascent = {p.max_ascent} needs privacy.attacker_features = {CALIBRATED_PROFILE!r} "
                f"(got {p.attacker_features!r}: the loss reaches each member through one number only there); "
                "set privacy.max_ascent = 0 with these features"
            )
        if p.attacker_features == CALIBRATED_PROFILE and p.attacker_feature_draws % p.attacker_profile_bands:
            raise ConfigError(
                f"privacy.attacker_feature_draws = {p.attacker_feature_draws} must be a multiple of "
                f"privacy.attacker_profile_bands = {p.attacker_profile_bands} (attacker_features = "
                f"{CALIBRATED_PROFILE!r} draws as many (t, ε) in each band)"
            )

    @classmethod
    def build(cls, cfg: ExperimentConfig, feature_size: int, batches: MembershipBatches | None, seed: int) -> Objective:
        if batches is None:
            raise ValueError(f"train.method = {cfg.train.method!r} needs the client's aux and test loss maps")
        p = cfg.privacy
        attacker = ProxyAttacker(
            attacker_input_size(p, feature_size),
            lr=p.attacker_learning_rate,
            weight_decay=p.attacker_weight_decay,
            dropout=p.attacker_dropout,
            seed=seed,
            device=batches.device,
            hidden=p.attacker_hidden,
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
        if self.privacy.attacker_features == CALIBRATED_PROFILE:
            return self.profile_loss(err, batch)
        l_ada, seen = self.features(err, batch)
        gain = -member_cross_entropy(self.attacker.model, seen, self.privacy.cap_gain_at_chance)
        metrics = {"loss_ada": to_float(l_ada.detach()), "mi_gain": to_float(gain.detach())}
        if self.privacy.base_anchor > 0:
            anchor = self.base_anchor(batch)
            metrics["base_anchor"] = to_float(anchor.detach())
            l_ada = l_ada + self.privacy.base_anchor * anchor
        return self.combine(l_ada, gain), metrics

    def profile_loss(self, err: torch.Tensor, batch: StepBatch | None) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss on calibrated profiles. It depends on the error map only through each member's loss ℓ_i at
        the step's draw (L_ada is their mean; the profiles' gradient comes through them), so its gradient is
        Σ_i c_i ∇ℓ_i with c_i = ∂loss/∂ℓ_i. ``privacy.max_ascent`` > 0 bounds the ascent the privacy term
        may turn a member's c_i into: c_i ≥ −max_ascent × its plain descent coefficient (that of L_ada
        alone). A sharp proxy's push is otherwise many times the descent, and the members' losses, then
        everyone's, climb round after round."""
        p, profiles = self.privacy, self.batches.profiles
        if profiles is None or batch is None or batch.index is None:
            raise ValueError("calibrated-profile features need the client's profiles and the batch's member rows")
        if self.steps % p.attacker_refresh_steps == 0:
            if p.profile_snapshot:
                profiles.refresh_all()
            else:
                profiles.refresh_untrained()
        ell = err.float().mean(dim=(1, 2, 3))
        leaf = ell.detach().requires_grad_(True)
        anchor = self.base_anchor(batch) if p.base_anchor > 0 else ell.new_zeros(())
        anchor_leaf = anchor.detach().requires_grad_(True)
        gain = -member_cross_entropy(
            self.attacker.model, profiles.straight_through(batch.index, leaf, batch.t), p.cap_gain_at_chance
        )
        loss = self.combine(leaf.mean() + p.base_anchor * anchor_leaf, gain)
        coef, anchor_coef = torch.autograd.grad(loss, (leaf, anchor_leaf))
        if p.max_ascent > 0:
            (plain,) = torch.autograd.grad(self.combine(leaf.mean(), gain.detach()), leaf)
            coef = torch.maximum(coef, -p.max_ascent * plain)
        surrogate = (coef * ell).sum() + anchor_coef * anchor
        out = loss.detach() + surrogate - surrogate.detach()  # the loss's value, the (bounded) gradient
        metrics = {"loss_ada": to_float(ell.detach().mean()), "mi_gain": to_float(gain.detach())}
        if p.base_anchor > 0:
            metrics["base_anchor"] = to_float(anchor.detach())
        return out, metrics

    @staticmethod
    def base_anchor(batch: StepBatch | None) -> torch.Tensor:
        """Mean ‖ε_θ − ε_base‖² per element on the step's own inputs: how far the adapted model's prediction
        has moved from the base model's, which memorising a member and damaging the model alike increase."""
        if batch is None or batch.residual is None or batch.base_residual is None:
            raise ValueError("privacy.base_anchor needs the step's residual and the base model's")
        return (batch.residual.float() - batch.base_residual(batch.noise, batch.t).float()).pow(2).mean()

    def after_step(self) -> dict[str, float]:
        self.steps += 1
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
