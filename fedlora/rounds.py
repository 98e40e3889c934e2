"""What the server records of each round, in one object (no shared dicts).

The strategy writes who was online (deployment), the sampling, the bytes sent and received, each client's reply metrics,
the failed replies, the rejected updates and why a round was skipped; the DP mode reads the
clients' metrics for its accounting; the ServerApp turns a round into its ``metrics.jsonl``
row and the run's communication and failure totals.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .reports import Communication, Failures
from .update_validation import rejection_kind

ANSI = re.compile(r"\x1b\[[0-9;]*m")
FLOWER_ERROR = re.compile(r"^<class '[^']*'>:<'(.*)'>$", re.DOTALL)  # how Flower reports a raising ClientApp
MAX_REASON = 300


def plain_reason(reason: str) -> str:
    """A failed reply's reason without ANSI colours, Ray's traceback or Flower's ``<class ...>:<'...'>``
    wrapping: the exception's own message."""
    text = ANSI.sub("", str(reason))
    if "Message: " in text:  # Flower's ClientAppException wraps the client's exception message
        text = text.rsplit("Message: ", 1)[1]
    text = text.strip()
    flower = FLOWER_ERROR.match(text)
    text = (flower.group(1) if flower else text.removesuffix("'>")).strip()
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 1] + "…"


@dataclass
class RoundRecord:
    # deployment: the partitions online when the round started, and which came or went since the last one
    online: list[int] | None = None
    joined: list[int] | None = None
    left: list[int] | None = None
    sampled: list[int] | None = None  # partition ids, sorted
    bytes_down_per_client: float | None = None
    failures: list[str] | None = None  # "partition P: reason" per failed (or missing) reply
    rejected: list[str] | None = None  # "partition P: kind: detail" per update the server left out
    clients: dict[str, dict[str, Any]] | None = None  # partition id -> its reply metrics
    ray_nodes: dict[str, str] | None = None  # partition id -> the Ray node that trained it (simulation)
    bytes_up_per_client: float | None = None
    bytes_eval_only_per_client: float | None = None  # arrays sent for the audit only (FedSA's B)
    # serialised message contents, every protocol message of the round (SecAgg+: its four stages)
    wire_bytes_down_per_client: float | None = None
    wire_bytes_up_per_client: float | None = None
    round_s: float | None = None
    skipped: str | None = None  # why a round produced no update (SecAgg+ halted, too few accepted updates)
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
        """The round's fields for its metrics.jsonl row (unset ones left out), with its failure counts."""
        row = {k: v for k, v in vars(self).items() if v is not None}
        if self.failures is not None or self.rejected is not None:
            row["failed_replies"] = len(self.failures or [])
            row["rejected_updates"] = len(self.rejected or [])
        return row


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

    def failures(self) -> Failures:
        """Failed replies, rejected updates and skipped rounds over the run, with a count per plain reason."""
        totals = Failures()
        reasons: Counter[str] = Counter()
        for r in sorted(self.rounds):
            record = self.rounds[r]
            for line in record.failures or []:
                reasons["failed: " + _without_who(line)] += 1
            for line in record.rejected or []:
                reasons["rejected: " + rejection_kind(line)] += 1
            if record.skipped and r > 0:
                totals.skipped_rounds += 1
                reasons["skipped: " + record.skipped.split(":", 1)[0]] += 1
            totals.failed_replies += len(record.failures or [])
            totals.rejected_updates += len(record.rejected or [])
        totals.reasons = dict(sorted(reasons.items()))
        return totals


def _without_who(line: str) -> str:
    """A failure line's reason without its ``partition P: `` prefix."""
    return line.split(": ", 1)[1] if line.startswith(("partition ", "node ")) and ": " in line else line
