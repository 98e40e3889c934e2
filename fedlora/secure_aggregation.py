"""Secure aggregation with SecAgg+ (Bell et al., CCS 2020), as fedlora runs it on Flower's implementation.

What the server sees: from each sampled client a vector of int64 values, uniformly masked
modulo 2**32 (each client's own mask plus pairwise masks with its neighbours), the client's
weight in the clear (its ``num-examples``) and its reply metrics; after the unmask stage, only
the decoded weighted mean of the uploads. What it does not see: any one client's update.
A client that drops out after the key exchange is reconstructed around (its pairwise masks are
recovered from its neighbours' shares); if fewer than the threshold survive, the round halts.

The decoding is exact up to quantization: each uploaded value v is scaled by its client's
weight ratio rho = w / max_weight, clipped to [-c, c] (c = ``secagg_clipping_range``) and
stochastically rounded to one of T = ``secagg_quantization_range`` levels, so the mean's
error is below one level, 2c / T, divided by the mean ratio: ``error_bound``.

Flower's parts (``SecAggPlusWorkflow``, ``secaggplus_mod``) are driven by ``server/`` and
``clients/``; this module is the part both sides and the reports need, without Flower.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .config import MODULUS_RANGE, ExperimentConfig, count_or_fraction, resolve, sampled_per_round
from .rounds import RoundLog

SERVER_SEES = (
    "each client's masked upload (uniform int64 values) and, after unmasking, only the weighted mean of "
    "the uploads; the weights (num-examples) and reply metrics travel in the clear"
)
SERVER_DOES_NOT_SEE = "any one client's update (nor a dropped client's, which is reconstructed around)"
ORACLE_LABEL = (
    "simulation oracle: each client's plain update, fetched outside SecAgg+ (federation.secagg_oracle); "
    "no real party sees these"
)
NO_CLIENT_AUDIT = "none: under SecAgg+ the server holds no per-client update to attack"


@dataclass(frozen=True)
class SecAggSettings:
    num_shares: int | float
    reconstruction_threshold: int | float
    clipping_range: float
    quantization_range: int
    modulus_range: int
    max_weight: float  # the largest client weight: the ratio w / max_weight is at most 1

    @classmethod
    def from_config(cls, cfg: ExperimentConfig, max_weight: float) -> SecAggSettings:
        f = cfg.federation
        return cls(
            num_shares=count_or_fraction(f.secagg_num_shares),
            reconstruction_threshold=count_or_fraction(f.secagg_reconstruction_threshold),
            clipping_range=f.secagg_clipping_range,
            quantization_range=f.secagg_quantization_range,
            modulus_range=MODULUS_RANGE,
            max_weight=float(max_weight),
        )

    def weight_ratio(self, weight: float) -> float:
        """rho as the client applies it: w / max_weight, itself quantized to 1/T."""
        return round(weight / self.max_weight * self.quantization_range) / self.quantization_range

    def level(self) -> float:
        """One quantization level, 2c / T."""
        return 2 * self.clipping_range / self.quantization_range

    def error_bound(self, weights: Sequence[float]) -> float:
        """Largest possible |decoded mean - weighted mean| of one value, for values within the range."""
        ratios = [self.weight_ratio(w) for w in weights]
        return self.level() / float(np.mean(ratios)) if ratios else float("nan")

    def clipped_values(self, upload: Mapping[str, np.ndarray], weight: float) -> int:
        """How many of a client's values the quantizer will clip (it does so silently)."""
        rho = self.weight_ratio(weight)
        return int(sum(int(np.count_nonzero(np.abs(v * rho) > self.clipping_range)) for v in upload.values()))

    def to_dict(self, sampled: int) -> dict[str, Any]:
        shares, threshold = resolve(self.num_shares, self.reconstruction_threshold, sampled)
        return {**asdict(self), "shares_per_round": shares, "threshold_per_round": threshold}


def secure_summary(cfg: ExperimentConfig, settings: SecAggSettings, log: RoundLog) -> dict[str, Any]:
    """summary.json's ``secure_aggregation``: the protocol's parameters, what the server saw, what went wrong."""
    rounds = [log.rounds[r] for r in sorted(log.rounds) if r > 0]
    errors = [r.secagg_max_abs_error for r in rounds if r.secagg_max_abs_error is not None]
    bounds = [r.secagg_error_bound for r in rounds if r.secagg_error_bound is not None]
    return {
        "enabled": True,
        "protocol": "SecAgg+ (Bell et al., CCS 2020): Flower's SecAggPlusWorkflow and secaggplus_mod",
        **settings.to_dict(sampled_per_round(cfg)),
        "server_sees": SERVER_SEES,
        "server_does_not_see": SERVER_DOES_NOT_SEE,
        "client_audit": ORACLE_LABEL if cfg.federation.secagg_oracle else NO_CLIENT_AUDIT,
        "rounds_skipped": [r for r in sorted(log.rounds) if r > 0 and log.rounds[r].skipped],
        "dropouts": int(sum(len(r.secagg_dropped or []) for r in rounds)),
        "clipped_values": int(sum(r.secagg_clipped_values or 0 for r in rounds)),
        "error_bound": max(bounds) if bounds else None,
        "max_abs_error": max(errors) if errors else None,  # measured with the oracle only
    }
