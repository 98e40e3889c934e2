"""Local training objectives, pluggable into the client trainer.

An objective sees the member batch's per-element squared error map (eps - eps_theta)^2 from
the step's single UNet forward pass, so variants that need the same map as an attack
feature (MP-LoRA, SMP-LoRA) cost no extra forward pass. Anything an objective must keep
across rounds (a proxy attacker, say) goes through ``state_dict``/``load_state_dict``.
"""

from __future__ import annotations

from typing import Protocol

import torch

from ..config import TrainConfig


class Objective(Protocol):
    name: str

    def loss(self, err: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Scalar loss to minimise (w.r.t. LoRA) from the (B, C, h, w) error map, plus metrics."""

    def after_step(self) -> dict[str, float]:
        """Work done after each LoRA step (e.g. an attacker update); returns metrics."""

    def state_dict(self) -> dict[str, torch.Tensor]: ...

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None: ...


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


def build_objective(train: TrainConfig) -> Objective:
    if train.method == "lora":
        return LoraObjective()
    raise ValueError(f"train.method = {train.method!r} has no objective")
