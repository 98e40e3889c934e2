"""What a local objective is: the loss a client minimises in each LoRA step, and what it keeps.

An objective sees the member batch's per-element squared-error map (ε − ε_θ)² of the step's
single UNet forward pass. Objectives that defend against membership inference train a proxy
attacker on D_aux loss maps (``needs_aux``); the trainer then hands them ``MembershipBatches``.
Anything an objective keeps across rounds (the proxy attacker and its optimiser) goes through
``state_dict``/``load_state_dict`` into the client's Flower ``context.state``.

To add an objective: a module in this package with one ``Objective`` subclass registered in
``fedlora.registry.OBJECTIVES``, and its import in ``fedlora/privacy/objectives/__init__.py``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch

from ...config import ExperimentConfig
from ..loss_profile import LossProfiles

# () or (k) -> (loss maps under no_grad, their membership labels: members first)
LabelledMaps = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class StepBatch:
    """The member batch of one LoRA step, for objectives that need more than its error map."""

    noise: torch.Tensor  # the step's own ε and t
    t: torch.Tensor
    redraw: Callable[[], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]  # another (err with grad, ε, t)
    base_error: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # the base model's map at (ε, t), no grad
    index: torch.Tensor | None = None  # the batch's rows in the client's members (D^m_aux first, then D^m_te)
    residual: torch.Tensor | None = None  # ε_θ − ε of the step's draw, with grad (the error map is its square)
    base_residual: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None  # the base's at (ε, t), no grad


@dataclass(frozen=True)
class MembershipBatches:
    """Where a membership-aware objective gets its loss maps from (the client's own splits)."""

    aux: Callable[[int], LabelledMaps]  # k random D^m_aux and k random D^nm_aux maps
    test: Callable[[], LabelledMaps]  # the client's whole D_te, once after the round
    device: torch.device = torch.device("cpu")  # where the maps are (the proxy attacker lives there too)
    # calibrated-profile: the cached profiles of the members (rows as in StepBatch.index) and D^nm_aux
    profiles: LossProfiles | None = None


class Objective(ABC):
    """One local objective. ``build`` makes it for a client; the trainer calls the rest."""

    needs_aux: ClassVar[bool] = False  # trains on D_aux during local training (a proxy attacker)

    @classmethod
    def validate(cls, cfg: ExperimentConfig) -> None:
        """Refuse settings this objective cannot honour (raise ConfigError naming the keys)."""

    @classmethod
    def build(cls, cfg: ExperimentConfig, feature_size: int, batches: MembershipBatches | None, seed: int) -> Objective:
        """This client's objective; ``feature_size`` is the number of elements of one loss map."""
        return cls()

    @abstractmethod
    def loss(self, err: torch.Tensor, batch: StepBatch | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """Scalar loss to minimise (w.r.t. LoRA) from the (B, C, h, w) error map, plus per-step metrics.

        ``batch`` lets an objective draw more (t, ε) for the same members or query the base model."""

    def after_step(self) -> dict[str, float]:
        """Work done after each LoRA step (an attacker update); returns per-step metrics."""
        return {}

    def after_round(self) -> dict[str, float]:
        """Metrics measured once after the round's training (the proxy attacker on D_te)."""
        return {}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} keeps no state, got keys {sorted(state)[:3]}")
