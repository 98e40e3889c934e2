"""Which clients' last updates the server keeps for the per-client membership audit.

Keeping every client's last update grows the server's memory with the number of clients. The
audit keeps at most ``evaluation.audit_clients`` of them: every client when there are that many
or fewer, else a sample drawn from the run seed (the same clients on every run of the config).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from .config import ExperimentConfig

SAMPLE_STREAM = 13  # the seed stream of the audited sample (apart from the rounds' client sampling)


def audited_clients(cfg: ExperimentConfig) -> frozenset[int]:
    n, k = cfg.federation.num_clients, cfg.evaluation.audit_clients
    if n <= k:
        return frozenset(range(n))
    rng = np.random.default_rng([cfg.run.seed, SAMPLE_STREAM])
    return frozenset(int(c) for c in rng.choice(n, size=k, replace=False))


class AuditViews(dict):
    """client id -> its last view, for the audited clients only; the others' are dropped on arrival."""

    def __init__(self, audited: Iterable[int], items: Mapping[int, Any] | None = None):
        super().__init__()
        self.audited = frozenset(audited)
        self.update(items or {})

    def __setitem__(self, client: int, view: Any) -> None:
        if client in self.audited:
            super().__setitem__(client, view)

    def update(self, items: Any = (), **_: Any) -> None:  # type: ignore[override]
        for client, view in dict(items).items():
            self[client] = view
