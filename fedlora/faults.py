"""Fault injection: clients that raise, or upload NaN, on purpose, to test what the server does with them.

``simulation.fail_clients = ["1@2"]`` makes partition 1 raise during round 2, after it has
trained (under SecAgg+: after the key exchange, in the masked-vector stage, the case the
protocol must reconstruct around). The server sees an ordinary failed reply.
``simulation.nan_clients = ["1@2"]`` makes it reply with NaN in place of its update instead; the
server's update validation must reject and count it. The config travels with every message, so
both work on the deployment engine as in simulation.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np

from .errors import ConfigError

ENTRY = re.compile(r"^(\d+)@(\d+)$")


class InjectedFailure(RuntimeError):
    """Raised by a client that ``simulation.fail_clients`` lists for this round."""


def failures(entries: Sequence[str], key: str = "fail_clients") -> set[tuple[int, int]]:
    """(partition id, round) pairs from ``simulation.fail_clients`` (or ``nan_clients``)."""
    out = set()
    for entry in entries:
        match = ENTRY.match(entry.strip())
        if match is None:
            raise ConfigError(f"simulation.{key} entry {entry!r} must look like PARTITION@ROUND, e.g. '1@2'")
        out.add((int(match.group(1)), int(match.group(2))))
    return out


def validate(entries: Sequence[str], num_clients: int, rounds: int, key: str = "fail_clients") -> None:
    for pid, server_round in sorted(failures(entries, key)):
        if pid >= num_clients:
            raise ConfigError(f"simulation.{key} names partition {pid}; partitions are 0..{num_clients - 1}")
        if not 1 <= server_round <= rounds:
            raise ConfigError(f"simulation.{key} names round {server_round}; rounds are 1..{rounds}")


def maybe_fail(entries: Sequence[str], partition: int, server_round: int) -> None:
    if (partition, server_round) in failures(entries):
        raise InjectedFailure(f"partition {partition} fails in round {server_round} (simulation.fail_clients)")


def maybe_poison(entries: Sequence[str], partition: int, server_round: int, upload: Mapping[str, np.ndarray]) -> dict:
    """The upload, or NaN of its shapes when ``simulation.nan_clients`` lists this client for this round."""
    if (partition, server_round) in failures(entries, "nan_clients"):
        return {k: np.full_like(v, np.nan) for k, v in upload.items()}
    return dict(upload)
