"""How each aggregation rule splits the adapter between the server and its clients.

``fedlora.aggregation`` holds the math; this module says, per rule, what the server sends down
(the payload), what a client trains, sends up and keeps, and which model the evaluation looks
at (``ModelView``). Arrays are numpy here; nothing imports Flower.

| rule   | down                        | client trains | up     | client keeps          |
|--------|-----------------------------|---------------|--------|-----------------------|
| fedavg | A, B                        | A, B          | A, B   | nothing               |
| ffa    | B (A is the shared seed's)  | B             | B      | nothing               |
| flora  | stacked A, B of the clients | fresh A, B    | A, B   | merged base update    |
| svd    | rank-rₖ SVD of the mean     | A, B          | A, B   | nothing               |
| fedsa  | A                           | A, B          | A      | its own B             |
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from . import aggregation as agg
from .config import ExperimentConfig
from .models.lora import ModelView

Arrays = dict[str, np.ndarray]
RULES = ("fedavg", "ffa", "flora", "svd", "fedsa")


@dataclass(frozen=True)
class RuleTraits:
    train_a: bool  # False: A stays at the shared seeded init
    upload: tuple[str, ...]  # the factors a client sends up
    keeps_b: bool  # B never leaves the client (FedSA-LoRA)
    fresh_lora: bool  # merge what arrives into the base and restart the LoRA (FLoRA)
    heterogeneous_ranks: bool


TRAITS: dict[str, RuleTraits] = {
    "fedavg": RuleTraits(True, ("A", "B"), False, False, False),
    "ffa": RuleTraits(False, ("B",), False, False, False),
    "flora": RuleTraits(True, ("A", "B"), False, True, True),
    "svd": RuleTraits(True, ("A", "B"), False, False, True),
    "fedsa": RuleTraits(True, ("A",), True, False, False),
}


def traits(rule: str) -> RuleTraits:
    if rule not in TRAITS:
        raise ValueError(f"federation.aggregation = {rule!r} is unknown; choose one of {list(RULES)}")
    return TRAITS[rule]


def client_rank(cfg: ExperimentConfig, client_id: int) -> int:
    """``federation.client_ranks`` cycled over client ids, else ``model.lora_rank``."""
    ranks = cfg.federation.client_ranks
    return int(ranks[client_id % len(ranks)]) if ranks else cfg.model.lora_rank


def client_scaling(cfg: ExperimentConfig, client_id: int) -> float:
    """peft's s = lora_alpha / r for this client's rank (alpha is shared, so s varies with r)."""
    return cfg.model.lora_alpha / client_rank(cfg, client_id)


def factor(state: Mapping[str, np.ndarray], which: str) -> Arrays:
    suffix = {"A": agg.A_SUFFIX, "B": agg.B_SUFFIX}[which]
    return {k: v for k, v in state.items() if k.endswith(suffix)}


# --------------------------------------------------------------------------------------------
# Client side
# --------------------------------------------------------------------------------------------


@dataclass
class ClientSetup:
    adapter: Arrays  # the LoRA state to train from (this client's rank)
    base_deltas: dict[str, np.ndarray]  # merged into the base weights (FLoRA), else empty


def client_setup(
    cfg: ExperimentConfig, client_id: int, payload: Mapping[str, np.ndarray],
    kept: Mapping[str, np.ndarray], init: Mapping[str, np.ndarray],
) -> ClientSetup:
    """Turn what arrived (``payload``) and what the client kept into the adapter it trains.

    ``init`` is the client's seeded initial adapter (same A on every client with the same rank);
    ``kept`` is what ``client_keep`` returned last round (empty in the first).
    """
    rule = cfg.federation.aggregation
    if rule == "fedavg":
        return ClientSetup(dict(payload), {})
    if rule == "ffa":
        return ClientSetup({**factor(init, "A"), **factor(payload, "B")}, {})
    if rule == "fedsa":
        b = factor(kept, "B") or factor(init, "B")
        return ClientSetup({**factor(payload, "A"), **b}, {})
    if rule == "svd":
        return ClientSetup(agg.fill_dead_directions(payload, init), {})
    if rule == "flora":
        merged = {k: np.array(v, dtype=np.float64) for k, v in kept.items()}
        for prefix, delta in (agg.delta_weights(payload) if payload else {}).items():
            merged[prefix] = merged[prefix] + delta if prefix in merged else delta
        return ClientSetup(dict(init), merged)
    raise ValueError(f"federation.aggregation = {rule!r} is unknown; choose one of {list(RULES)}")


def client_upload(cfg: ExperimentConfig, trained: Mapping[str, np.ndarray]) -> Arrays:
    """The factors the rule sends up, in the adapter's key order (Flower's DP clipping pairs arrays by position)."""
    keep = set()
    for which in traits(cfg.federation.aggregation).upload:
        keep |= set(factor(trained, which))
    return {k: v for k, v in trained.items() if k in keep}


def client_keep(cfg: ExperimentConfig, trained: Mapping[str, np.ndarray], setup: ClientSetup) -> Arrays:
    """What must outlive the round on the client: FedSA's B, FLoRA's merged base update."""
    rule = cfg.federation.aggregation
    if rule == "fedsa":
        return factor(trained, "B")
    if rule == "flora":
        return dict(setup.base_deltas)
    return {}


# --------------------------------------------------------------------------------------------
# Server side
# --------------------------------------------------------------------------------------------


class ServerRule:
    """The server's half of a rule: payload per client, aggregation, and the models it can show.

    ``initial`` is the seeded initial adapter at ``model.lora_rank`` (B = 0), the same one every
    client builds from the run seed.
    """

    def __init__(self, cfg: ExperimentConfig, initial: Mapping[str, np.ndarray]):
        self.cfg = cfg
        self.rule = cfg.federation.aggregation
        self.traits = traits(self.rule)
        self.initial = {k: np.asarray(v, dtype=np.float32) for k, v in initial.items()}
        self.like = agg.lora_pairs(self.initial)
        self.global_lora: Arrays = dict(self.initial)  # fedavg / ffa / fedsa (A part)
        self.dense: dict[str, np.ndarray] = {}  # svd: exact mean update; flora: cumulative merged update
        self.stacks: list[Arrays] = []  # flora: one stacked update per aggregated round
        self.delivered: dict[int, int] = {}  # flora: how many stacks each client has merged
        self.views: dict[int, ModelView] = {}  # the last update of each client, as the server can see it
        self._payload_cache: dict[int, Arrays] = {}

    # ---- down ----
    def payload(self, client_id: int) -> Arrays:
        if self.rule == "fedavg":
            return dict(self.global_lora)
        if self.rule == "ffa":
            return factor(self.global_lora, "B")
        if self.rule == "fedsa":
            return factor(self.global_lora, "A")
        if self.rule == "svd":
            rank = client_rank(self.cfg, client_id)
            if rank not in self._payload_cache:
                target = self.dense or {p: np.zeros((b.shape[0], a[0].size)) for p, (a, b) in self.like.items()}
                self._payload_cache[rank] = agg.truncate(
                    target, [rank], self.like, out_scalings=[client_scaling(self.cfg, client_id)]
                )[0]
            return self._payload_cache[rank]
        # flora: every stack this client has not merged yet, concatenated (their sum, exactly)
        pending = self.stacks[self.delivered.get(client_id, 0):]
        return agg.concat_ranks(pending) if pending else {}

    def mark_sent(self, client_id: int) -> None:
        if self.rule == "flora":
            self.delivered[client_id] = len(self.stacks)

    # ---- up ----
    def aggregate(self, uploads: Mapping[int, Mapping[str, np.ndarray]], weights: Mapping[int, float],
                  eval_only: Mapping[int, Mapping[str, np.ndarray]] | None = None) -> None:
        """Fold one round's uploads (client id -> arrays, sorted by id for reproducibility) into the global state."""
        ids = sorted(uploads)
        if not ids:
            raise ValueError("nothing to aggregate: no client uploads")
        w = [float(weights[i]) for i in ids]
        eval_only = eval_only or {}
        self._payload_cache = {}
        if self.rule == "fedavg":
            states = [uploads[i] for i in ids]
            self.global_lora = agg.fedavg(states, w)
            self.views.update({i: ModelView(lora=dict(uploads[i])) for i in ids})
        elif self.rule == "ffa":
            a = factor(self.global_lora, "A")
            states = [{**a, **factor(uploads[i], "B")} for i in ids]
            self.global_lora = agg.ffa(states, w)
            self.views.update({i: ModelView(lora=s) for i, s in zip(ids, states)})
        elif self.rule == "fedsa":
            self.global_lora = {**agg.fedsa([uploads[i] for i in ids], w), **factor(self.global_lora, "B")}
            missing = [i for i in ids if not factor(eval_only.get(i, {}), "B")]
            if not missing:
                # evaluation only: the personalised models (Aₖ, Bₖ) and their average update
                personal = [{**factor(uploads[i], "A"), **factor(eval_only[i], "B")} for i in ids]
                s = self.cfg.model.lora_alpha / self.cfg.model.lora_rank
                self.views.update({i: ModelView(deltas=agg.delta_weights(p, s)) for i, p in zip(ids, personal)})
                shared_a = factor(self.global_lora, "A")
                self.dense = agg.mean_delta([{**shared_a, **factor(eval_only[i], "B")} for i in ids], w, [s] * len(ids))
        elif self.rule == "svd":
            states = [uploads[i] for i in ids]
            scalings = [client_scaling(self.cfg, i) for i in ids]
            self.dense = agg.mean_delta(states, w, scalings)
            self.views.update({i: ModelView(deltas=agg.delta_weights(uploads[i], sc)) for i, sc in zip(ids, scalings)})
        elif self.rule == "flora":
            states = [uploads[i] for i in ids]
            scalings = [client_scaling(self.cfg, i) for i in ids]
            before = {p: d.copy() for p, d in self.dense.items()}
            stack = agg.flora_stack(states, w, scalings)
            self.stacks.append(stack)
            for prefix, delta in agg.delta_weights(stack).items():
                self.dense[prefix] = self.dense[prefix] + delta if prefix in self.dense else delta
            for i, sc in zip(ids, scalings):
                own = agg.delta_weights(uploads[i], sc)
                self.views[i] = ModelView(deltas={p: before.get(p, 0.0) + d for p, d in own.items()})
        else:
            raise ValueError(f"federation.aggregation = {self.rule!r} is unknown; choose one of {list(RULES)}")

    def view_of_upload(self, upload: Mapping[str, np.ndarray]) -> ModelView:
        """FedAvg: a client's upload is its whole adapter."""
        return ModelView(lora=dict(upload))

    # ---- what the evaluation looks at ----
    def global_view(self) -> ModelView:
        """The global model: the LoRA for fedavg/ffa, the exact dense update for flora/svd/fedsa."""
        if self.rule in ("fedavg", "ffa"):
            return ModelView(lora=dict(self.global_lora))
        return ModelView(deltas=dict(self.dense))

    def client_views(self) -> dict[int, ModelView]:
        return dict(self.views)
