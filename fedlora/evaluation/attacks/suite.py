"""Run the attacks a config names on one target."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from ...config import EvaluationConfig
from ...registry import ATTACKS
from .base import AttackContext, AttackResult, AttackSets, AttackTarget, SampleSet


def run_attacks(
    model: AttackTarget,
    sets: AttackSets,
    cfg: EvaluationConfig,
    seed: int,
    desc: str = "attack",
    reference: Callable[[], AbstractContextManager[Any]] | None = None,
    shadow: Callable[[SampleSet, int], AbstractContextManager[Any]] | None = None,
) -> dict[str, AttackResult]:
    """Every attack ``cfg.attacks`` names, in that order, on one target model.

    ``reference`` and ``shadow`` give the calibrated attacks the public base and LiRA its shadows
    (``fedlora.evaluation.membership.AuditModels`` provides both).
    """
    ctx = AttackContext(model, sets, cfg, seed, tuple(cfg.attacks), desc, reference=reference, shadow=shadow)
    return {key: ATTACKS.get(key)(ctx) for key in cfg.attacks}
