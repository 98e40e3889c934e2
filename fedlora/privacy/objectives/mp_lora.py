"""MP-LoRA (Luo et al., AAAI 2025, eq. 6): the min-max form L_ada + λ·G."""

from __future__ import annotations

import torch

from ...registry import OBJECTIVES
from .membership import ProxyAttackerObjective


def mp_lora_loss(l_ada: torch.Tensor, gain: torch.Tensor, mi_lambda: float) -> torch.Tensor:
    return l_ada + mi_lambda * gain


@OBJECTIVES.register(
    "mp-lora",
    reference="Luo et al., AAAI 2025 (arXiv 2402.11989), eq. 6",
    description="L_ada + λ·G against the client's own proxy attacker (min-max; can be unstable)",
)
class MpLora(ProxyAttackerObjective):
    def combine(self, l_ada: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
        return mp_lora_loss(l_ada, gain, self.privacy.mi_lambda)
