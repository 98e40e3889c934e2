"""Leakage of a finished run: attacks on the global model and on each client's last update.

Global target: the final global adapter, attacked with the union of the clients' aux sets
(D_aux) and test sets (D_te). Client targets: the adapter each client last sent (what the
server sees), attacked with that client's own sets only, so their sample sizes are small
and stated next to every number.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..config import ExperimentConfig
from ..data import ImageDataset, Splits
from ..models.lora import ModelView
from .attacks import AttackResult, AttackSets, Samples, SampleSet, run_attacks


def attack_sets(runtime: Any, dataset: ImageDataset, splits: Splits, clients: list[int]) -> AttackSets:
    """D^m_aux, D^nm_aux and D_te of these clients, encoded (one client's are the runtime's cached sets)."""

    def union(attr: str) -> SampleSet:
        parts = [runtime.encode(dataset, getattr(splits.clients[c], attr)) for c in clients]
        return parts[0] if len(parts) == 1 else Samples.concat(parts)

    return AttackSets(union("member_aux"), union("nonmember_aux"), union("member_test"), union("nonmember_test"))


def evaluate_membership(
    cfg: ExperimentConfig,
    runtime: Any,
    dataset: ImageDataset,
    splits: Splits,
    global_view: ModelView,
    client_views: Mapping[int, ModelView],
) -> tuple[dict, dict[str, AttackResult]]:
    """``privacy`` for summary.json, and the global model's attack results (for ROC curves)."""
    privacy: dict = {"global": {}, "clients": {}}
    if not cfg.evaluation.attacks:
        return privacy, {}
    seed = cfg.run.seed * 1000 + 17
    runtime.show(global_view)
    every = list(range(cfg.federation.num_clients))
    results = run_attacks(
        runtime, attack_sets(runtime, dataset, splits, every), cfg.evaluation, seed, desc="attack global"
    )
    privacy["global"] = {name: r.metrics | {"details": r.details} for name, r in results.items()}
    if cfg.evaluation.attack_clients:
        for cid in sorted(client_views):
            runtime.show(client_views[cid])
            sets = attack_sets(runtime, dataset, splits, [cid])
            res = run_attacks(runtime, sets, cfg.evaluation, seed + 1 + cid, desc=f"attack client {cid}")
            privacy["clients"][str(cid)] = {name: r.metrics | {"details": r.details} for name, r in res.items()}
    runtime.show(global_view)
    return privacy, results
