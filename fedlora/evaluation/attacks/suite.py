"""Run the attacks a config names on one target."""

from __future__ import annotations

from ...config import EvaluationConfig
from ...registry import ATTACKS
from .base import AttackContext, AttackResult, AttackSets, AttackTarget


def run_attacks(
    model: AttackTarget, sets: AttackSets, cfg: EvaluationConfig, seed: int, desc: str = "attack"
) -> dict[str, AttackResult]:
    """Every attack ``cfg.attacks`` names, in that order, on one target model."""
    ctx = AttackContext(model, sets, cfg, seed, requested=tuple(cfg.attacks), desc=desc)
    return {key: ATTACKS.get(key)(ctx) for key in cfg.attacks}
