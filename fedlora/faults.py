"""Fault injection for simulations: clients that raise on purpose, to test what a dropout does.

``simulation.fail_clients = ["1@2"]`` makes partition 1 raise during round 2, after it has
trained (under SecAgg+: after the key exchange, in the masked-vector stage, the case the
protocol must reconstruct around). The server sees an ordinary failed reply.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from .errors import ConfigError

ENTRY = re.compile(r"^(\d+)@(\d+)$")


class InjectedFailure(RuntimeError):
    """Raised by a client that ``simulation.fail_clients`` lists for this round."""


def failures(entries: Sequence[str]) -> set[tuple[int, int]]:
    """(partition id, round) pairs that must fail, from ``simulation.fail_clients``."""
    out = set()
    for entry in entries:
        match = ENTRY.match(entry.strip())
        if match is None:
            raise ConfigError(f"simulation.fail_clients entry {entry!r} must look like PARTITION@ROUND, e.g. '1@2'")
        out.add((int(match.group(1)), int(match.group(2))))
    return out


def validate(entries: Sequence[str], num_clients: int, rounds: int) -> None:
    for pid, server_round in sorted(failures(entries)):
        if pid >= num_clients:
            raise ConfigError(f"simulation.fail_clients names partition {pid}; partitions are 0..{num_clients - 1}")
        if not 1 <= server_round <= rounds:
            raise ConfigError(f"simulation.fail_clients names round {server_round}; rounds are 1..{rounds}")


def maybe_fail(entries: Sequence[str], partition: int, server_round: int) -> None:
    if (partition, server_round) in failures(entries):
        raise InjectedFailure(f"partition {partition} fails in round {server_round} (simulation.fail_clients)")
