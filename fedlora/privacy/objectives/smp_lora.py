"""SMP-LoRA (Luo et al., AAAI 2025, eq. 10): L_ada / (1 − λ·G + δ), G ≤ 0, so the denominator is ≥ 1 + δ."""

from __future__ import annotations

import torch

from ...registry import OBJECTIVES
from .membership import ProxyAttackerObjective


def smp_lora_loss(l_ada: torch.Tensor, gain: torch.Tensor, mi_lambda: float, stabilizer: float) -> torch.Tensor:
    return l_ada / (1.0 - mi_lambda * gain + stabilizer)


@OBJECTIVES.register(
    "smp-lora",
    reference="Luo et al., AAAI 2025 (arXiv 2402.11989), eq. 10",
    description="L_ada / (1 − λ·G + δ) against the client's own proxy attacker (stable ratio form)",
)
class SmpLora(ProxyAttackerObjective):
    def combine(self, l_ada: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
        return smp_lora_loss(l_ada, gain, self.privacy.mi_lambda, self.privacy.stabilizer)
