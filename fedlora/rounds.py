"""What the server records of each round, in one object (no shared dicts).

The strategy writes the sampling, the bytes sent and received, each client's reply metrics
and the failures; the DP mode reads the clients' metrics for its accounting; the ServerApp
turns a round into its ``metrics.jsonl`` row and the run's communication totals.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .reports import Communication

ANSI = re.compile(r"\x1b\[[0-9;]*m")
MAX_REASON = 300


def plain_reason(reason: str) -> str:
    """A failed reply's reason without ANSI colours or Ray's traceback: the exception's own message."""
    text = ANSI.sub("", str(reason))
    if "Message: " in text:  # Flower's ClientAppException wraps the client's exception message
        text = text.rsplit("Message: ", 1)[1]
    text = text.strip().removesuffix("'>").strip()
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 1] + "…"


@dataclass
class RoundRecord:
    sampled: list[int] | None = None  # partition ids, sorted
    bytes_down_per_client: float | None = None
    failures: list[str] | None = None  # one reason per failed reply
    clients: dict[str, dict[str, Any]] | None = None  # partition id -> its reply metrics
    bytes_up_per_client: float | None = None
    bytes_eval_only_per_client: float | None = None  # arrays sent for the audit only (FedSA's B)
    # serialised message contents, every protocol message of the round (SecAgg+: its four stages)
    wire_bytes_down_per_client: float | None = None
    wire_bytes_up_per_client: float | None = None
    round_s: float | None = None
    skipped: str | None = None  # why a round produced no update (e.g. SecAgg+ halted)
    # secure aggregation: who dropped out, values the quantizer clipped, the error bound and, with the
    # simulation's oracle, the measured max |decoded mean - plain weighted mean|
    secagg_dropped: list[int] | None = None
    secagg_clipped_values: int | None = None
    secagg_error_bound: float | None = None
    secagg_max_abs_error: float | None = None

    @property
    def trained(self) -> bool:
        """Some client's update arrived and was recorded."""
        return self.clients is not None

    def row(self) -> dict[str, Any]:
        """The round's fields for its metrics.jsonl row (unset ones left out)."""
        return {k: v for k, v in vars(self).items() if v is not None}


@dataclass
class RoundLog:
    rounds: dict[int, RoundRecord] = field(default_factory=dict)

    def __getitem__(self, server_round: int) -> RoundRecord:
        """The round's record, created on first use."""
        return self.rounds.setdefault(server_round, RoundRecord())

    def upto(self, server_round: int) -> list[RoundRecord]:
        return [self.rounds[r] for r in sorted(self.rounds) if r <= server_round]

    def trained(self) -> list[RoundRecord]:
        """Rounds that produced a model update, in round order."""
        return [self.rounds[r] for r in sorted(self.rounds) if self.rounds[r].trained]

    def row(self, server_round: int) -> dict[str, Any]:
        return self.rounds[server_round].row() if server_round in self.rounds else {}

    def communication(self) -> Communication:
        """Mean bytes per participating client and round over the trained rounds (FedSA's audit-only B apart)."""
        trained = self.trained()

        def values(key: str) -> list[float]:
            return [getattr(r, key) or 0.0 for r in trained]

        def mean(key: str) -> float:
            return float(np.mean(values(key))) if trained else 0.0

        return Communication(
            bytes_up_per_client_round=mean("bytes_up_per_client"),
            bytes_down_per_client_round=mean("bytes_down_per_client"),
            bytes_eval_only_per_client_round=mean("bytes_eval_only_per_client"),
            bytes_down_per_client_round_max=max(values("bytes_down_per_client"), default=0.0),
            wire_bytes_up_per_client_round=mean("wire_bytes_up_per_client"),
            wire_bytes_down_per_client_round=mean("wire_bytes_down_per_client"),
        )
