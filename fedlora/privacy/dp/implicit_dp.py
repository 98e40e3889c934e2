"""Implicit DP after arXiv 2409.17538: A frozen at N(0, 1/r), B-gradient rows scaled to C.

With A fixed, a B-gradient row gᵢAᵀ is a random projection of the full-gradient row gᵢ
(Johnson–Lindenstrauss); the argument fixes its norm so the projection noise has a fixed scale,
and equates it with DP-SGD noise of multiplier σ ≈ b/√r. fedlora reports no such number: the
argument needs a per-sample gradient bound, SGD and a secret A, while here the rows of the batch
gradient are rescaled, training uses AdamW and A comes from the public run seed; noise-free LoRA
is not DP (arXiv 2601.21719). The mode is a heuristic with no guarantee, and says so.
"""

from __future__ import annotations

from typing import Any

import torch

from ...config import ExperimentConfig
from ...errors import ConfigError
from ...models.lora import LORA_B
from ...registry import DP_MODES, RULES
from ...rounds import RoundLog
from ...rules import rule_class
from ...training import GradientHook
from .base import TIMING_ONLY, DpMode


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
    released_metrics = TIMING_ONLY  # as the formal modes do, so a heuristic run can be compared with them

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
        return {
            "mechanism": "implicit-dp",
            "b_gradient_row_norm": self.cfg.privacy.dp_max_grad_norm,
            "rank": self.cfg.model.lora_rank,
            "formal": False,
            "guarantee": "none",
            "covers": "nothing: no party and no view has a privacy guarantee",
            "note": "a heuristic after arXiv 2409.17538 with no guarantee: its noise multiplier would need a "
            "per-sample gradient bound, SGD and a secret A, while fedlora rescales rows of the batch gradient, "
            "trains with AdamW and derives A from the public run seed; noise-free LoRA is not DP (arXiv 2601.21719)",
        }


def rules_with_frozen_a() -> list[str]:
    return [e.key for e in RULES.entries() if not e.value.train_a]
