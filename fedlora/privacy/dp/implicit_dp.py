"""Implicit DP after arXiv 2409.17538: A frozen at N(0, 1/r), B-gradient rows scaled to C.

With A fixed, a B-gradient row gᵢAᵀ is a random projection of the full-gradient row gᵢ
(Johnson–Lindenstrauss); fixing its norm fixes the projection noise's scale, std ≈ C/√r per row,
which DP-SGD on a batch mean of b samples clipped at C reaches with noise multiplier σ ≈ b/√r.
A heuristic: the noise reuses one A for every step and coordinate, A is derived from the public
run seed, training uses AdamW, and noise-free LoRA is not DP (arXiv 2601.21719) — never an ε.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ...config import ExperimentConfig
from ...errors import ConfigError
from ...models.lora import LORA_B
from ...registry import DP_MODES, RULES
from ...rounds import RoundLog
from ...rules import rule_class
from ...training import GradientHook
from .base import DpMode


def scale_b_gradient_rows(unet: Any, norm: float) -> None:
    """Every row of each B gradient rescaled to ``norm``."""
    for name, param in unet.named_parameters():
        if LORA_B in name and param.grad is not None:
            rows = param.grad.reshape(param.grad.shape[0], -1)
            rows.mul_(norm / rows.norm(dim=1, keepdim=True).clamp_min(1e-12))


@DP_MODES.register(
    "implicit-dp",
    reference="Malekmohammadi & Farnadi, arXiv 2409.17538",
    description="A frozen at N(0, 1/r), B-gradient rows scaled to C: a heuristic σ_eq ≈ batch/√r, never a formal ε",
)
class ImplicitDp(DpMode):
    freezes_a = True

    @classmethod
    def validate(cls, cfg: ExperimentConfig) -> None:
        rule = cfg.federation.aggregation
        if rule_class(rule).train_a or cfg.model.lora_a_init != "gaussian":
            raise ConfigError(
                "privacy.dp = 'implicit-dp' needs A frozen at N(0, 1/r): set federation.aggregation = one of "
                f"{rules_with_frozen_a()} and model.lora_a_init = 'gaussian' (got {rule!r} and "
                f"{cfg.model.lora_a_init!r})"
            )

    def gradient_hook(self) -> GradientHook:
        norm = self.cfg.privacy.dp_max_grad_norm

        def hook(unet: Any, params: list[torch.nn.Parameter]) -> None:
            scale_b_gradient_rows(unet, norm)

        return hook

    def summary(self, log: RoundLog | None = None) -> dict[str, Any]:
        r, b = self.cfg.model.lora_rank, self.cfg.train.batch_size
        return {
            "mechanism": "implicit-dp",
            "b_gradient_row_norm": self.cfg.privacy.dp_max_grad_norm,
            "rank": r,
            "batch_size": b,
            "equivalent_noise_multiplier_heuristic": b / math.sqrt(r),
            "formal": False,
            "note": "heuristic after arXiv 2409.17538 (sigma_eq ~ batch/sqrt(r)); "
            "not a formal (epsilon, delta) guarantee",
        }


def rules_with_frozen_a() -> list[str]:
    return [e.key for e in RULES.entries() if not e.value.train_a]
