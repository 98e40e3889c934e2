"""Leakage of a finished run: attacks on the global model and on each client's last update.

Global target: the final global adapter, attacked with the union of the clients' aux sets
(D_aux) and test sets (D_te). Client targets: the adapter each client last sent (what the
server sees), attacked with that client's own sets only, so their sample sizes are small
and stated next to every number.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from ..config import ExperimentConfig
from ..data import ImageDataset, Splits
from ..models.lora import ModelView
from .attacks import AttackResult, AttackSets, Samples, SampleSet, run_attacks
from .leakage import KEY_MEANINGS
from .verdict import run_verdict


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
    models = AuditModels(runtime, cfg)
    runtime.show(global_view)
    every = list(range(cfg.federation.num_clients))
    sets = attack_sets(runtime, dataset, splits, every)
    results = run_attacks(runtime, sets, cfg.evaluation, seed, "attack global", models.reference, models.shadow)
    privacy["global"] = _entries(results)
    client_results: dict[str, dict[str, AttackResult]] = {}
    if cfg.evaluation.attack_clients:
        for cid in sorted(client_views):
            runtime.show(client_views[cid])
            sets = attack_sets(runtime, dataset, splits, [cid])
            client_results[str(cid)] = run_attacks(
                runtime, sets, cfg.evaluation, seed + 1 + cid, f"attack client {cid}", models.reference, models.shadow
            )
    privacy["clients"] = {cid: _entries(res) for cid, res in client_results.items()}
    privacy["verdict"] = run_verdict(results, client_results)
    privacy["metric_keys"] = KEY_MEANINGS
    runtime.show(global_view)
    return privacy, results


def _entries(results: Mapping[str, AttackResult]) -> dict[str, dict[str, Any]]:
    return {name: r.metrics | {"details": r.details} for name, r in results.items()}


class AuditModels:
    """The other models an attacker may query: the public base, and shadow LoRAs it trains itself."""

    def __init__(self, runtime: Any, cfg: ExperimentConfig):
        self.runtime, self.cfg = runtime, cfg

    def reference(self) -> AbstractContextManager[None]:
        return self.runtime.showing(ModelView())

    @contextmanager
    def shadow(self, samples: SampleSet, seed: int) -> Iterator[None]:
        """A fresh LoRA from the base, trained on ``samples`` with the run's recipe (all rounds' steps)."""
        from ..privacy.objectives import LoraObjective
        from ..training import train_lora

        train = self.cfg.train
        recipe = dataclasses.replace(train, local_steps=train.local_steps * self.cfg.federation.rounds)
        with self.runtime.showing(ModelView()):
            train_lora(self.runtime, samples, recipe, LoraObjective(), seed)
            yield
