"""Membership-inference attacks: one module per attack, registered in ``fedlora.registry.ATTACKS``.

An attack is a function ``(AttackContext) -> AttackResult`` registered with a key, a one-line
description and a reference (see ``base`` for the types and ``loss_threshold`` for the shortest
example). ``run_attacks`` runs the ones ``evaluation.attacks`` names on one target. The imports
below register the built-ins, in the order the reports list them.
"""

# The built-ins register in this order, the order configs and reports list them in.
# isort: off
from . import learned_mlp  # noqa: F401
from . import loss_threshold  # noqa: F401
from . import pia  # noqa: F401
from . import secmi  # noqa: F401
from . import score_norm  # noqa: F401
from . import gradient_norm  # noqa: F401
from . import clid  # noqa: F401
from . import lira  # noqa: F401

# isort: on
from .base import AttackContext, AttackFn, AttackResult, AttackSets, AttackTarget, Samples, SampleSet
from .suite import run_attacks

__all__ = [
    "AttackContext",
    "AttackFn",
    "AttackResult",
    "AttackSets",
    "AttackTarget",
    "SampleSet",
    "Samples",
    "run_attacks",
]
