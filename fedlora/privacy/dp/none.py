"""No differential privacy (the default)."""

from __future__ import annotations

from ...registry import DP_MODES
from .base import DpMode


@DP_MODES.register("none", description="no DP mechanism; no ε")
class NoDp(DpMode):
    pass
