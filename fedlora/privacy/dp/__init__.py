"""DP modes: one module per mode, registered in ``fedlora.registry.DP_MODES``.

| key | level | guarantee |
|---|---|---|
| `none` | — | none |
| `dp-fedavg` | user (client), central | (ε, δ), Flower's RDP accountant |
| `dp-lora` | sample, per client (local) | (ε, δ), Opacus' RDP accountant |
| `implicit-dp` | — | a heuristic noise multiplier, never an ε |

The imports below register the built-ins (``base.DpMode`` says what a mode provides).
"""

from __future__ import annotations

from ...config import ExperimentConfig
from ...registry import DP_MODES

# The built-ins register in this order, the order configs and reports list them in.
# isort: off
from . import none  # noqa: F401
from . import dp_fedavg  # noqa: F401
from . import dp_lora  # noqa: F401
from . import implicit_dp  # noqa: F401

# isort: on
from .base import DpMode, DpState


def dp_mode_class(key: str) -> type[DpMode]:
    cls: type[DpMode] = DP_MODES.get(key)
    return cls


def build_dp_mode(cfg: ExperimentConfig) -> DpMode:
    """The DP mode ``privacy.dp`` names."""
    return dp_mode_class(cfg.privacy.dp)(cfg)


__all__ = ["DpMode", "DpState", "build_dp_mode", "dp_mode_class"]
