"""Aggregation rules: one module per rule, registered in ``fedlora.registry.RULES``.

| rule   | down                        | client trains | up     | client keeps          |
|--------|-----------------------------|---------------|--------|-----------------------|
| fedavg | A, B                        | A, B          | A, B   | nothing               |
| ffa    | B (A is the shared seed's)  | B             | B      | nothing               |
| flora  | stacked A, B of the clients | fresh A, B    | A, B   | merged base update    |
| svd    | rank-rₖ SVD of the mean     | A, B          | A, B   | nothing               |
| fedsa  | A                           | A, B          | A      | its own B             |

The imports below register the built-ins (``base.Rule`` says what a rule provides).
"""

from __future__ import annotations

from ..config import ExperimentConfig
from ..registry import RULES

# The built-ins register in this order, the order configs and reports list them in.
# isort: off
from . import fedavg  # noqa: F401
from . import ffa  # noqa: F401
from . import flora  # noqa: F401
from . import svd  # noqa: F401
from . import fedsa  # noqa: F401

# isort: on
from .base import Arrays, ClientSetup, PerClient, Rule, State, client_rank, client_scaling, factor, rules_with


def rule_class(key: str) -> type[Rule]:
    cls: type[Rule] = RULES.get(key)
    return cls


def build_rule(cfg: ExperimentConfig) -> Rule:
    """The rule ``federation.aggregation`` names (call ``.start(initial)`` on the server)."""
    return rule_class(cfg.federation.aggregation)(cfg)


__all__ = [
    "Arrays",
    "ClientSetup",
    "PerClient",
    "State",
    "Rule",
    "build_rule",
    "client_rank",
    "client_scaling",
    "factor",
    "rule_class",
    "rules_with",
]
