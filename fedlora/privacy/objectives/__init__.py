"""Local objectives: one module per objective, registered in ``fedlora.registry.OBJECTIVES``.

| key | loss | keeps |
|---|---|---|
| `lora` | L_ada | nothing |
| `mp-lora` | L_ada + λ·G | its proxy attacker |
| `smp-lora` | L_ada / (1 − λ·G + δ) | its proxy attacker |

The imports below register the built-ins (``base.Objective`` says what one provides).
"""

from __future__ import annotations

from ...config import ExperimentConfig
from ...registry import OBJECTIVES

# The built-ins register in this order, the order configs and reports list them in.
# isort: off
from . import lora  # noqa: F401
from . import mp_lora  # noqa: F401
from . import smp_lora  # noqa: F401

# isort: on
from .base import LabelledMaps, MembershipBatches, Objective, StepBatch
from .lora import LoraObjective
from .membership import ProxyAttackerObjective
from .mp_lora import mp_lora_loss
from .smp_lora import smp_lora_loss


def objective_class(key: str) -> type[Objective]:
    cls: type[Objective] = OBJECTIVES.get(key)
    return cls


def build_objective(
    cfg: ExperimentConfig, feature_size: int = 0, batches: MembershipBatches | None = None, seed: int = 0
) -> Objective:
    """The objective ``train.method`` names, for one client."""
    return objective_class(cfg.train.method).build(cfg, feature_size, batches, seed)


__all__ = [
    "LabelledMaps",
    "LoraObjective",
    "MembershipBatches",
    "Objective",
    "ProxyAttackerObjective",
    "StepBatch",
    "build_objective",
    "mp_lora_loss",
    "objective_class",
    "smp_lora_loss",
]
