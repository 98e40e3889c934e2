"""Plain LoRA: L_ada, the mean squared noise-prediction error."""

from __future__ import annotations

import torch

from ...device import to_float
from ...registry import OBJECTIVES
from .base import Objective, StepBatch


@OBJECTIVES.register("lora", reference="Hu et al., ICLR 2022", description="L_ada = mean ‖ε − ε_θ(z_t, t, c)‖²")
class LoraObjective(Objective):
    def loss(self, err: torch.Tensor, batch: StepBatch | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        loss = err.mean()
        return loss, {"loss_ada": to_float(loss.detach())}
