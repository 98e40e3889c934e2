"""FLoRA: the server stacks the clients' factors (an exact sum); clients merge every stack into
their base weights and restart a fresh LoRA each round (clients may train different ranks)."""

from __future__ import annotations

import numpy as np

from .. import aggregation as agg
from ..models.lora import ModelView
from ..registry import RULES
from .base import Arrays, ClientSetup, PerClient, Rule, State, client_scaling


@RULES.register(
    "flora",
    reference="Wang et al., NeurIPS 2024",
    description="down the stacked A, B of the clients; clients merge them into the base and train a "
    "fresh A, B; up A, B; heterogeneous ranks",
)
class FLoRA(Rule):
    fresh_lora = True
    heterogeneous_ranks = True
    not_summable = "FLoRA stacks every client's A and B side by side (each client's factors are sent on to all)"

    def client_setup(self, client_id: int, payload: State, kept: State, init: State) -> ClientSetup:
        merged = {k: np.array(v, dtype=np.float64) for k, v in kept.items()}
        for prefix, delta in (agg.delta_weights(payload) if payload else {}).items():
            merged[prefix] = merged[prefix] + delta if prefix in merged else delta
        return ClientSetup(dict(init), merged)

    def client_keep(self, trained: State, setup: ClientSetup) -> Arrays:
        return dict(setup.base_deltas)  # the merged base update

    def start(self, initial: State) -> Rule:
        super().start(initial)
        self.dense: dict[str, np.ndarray] = {}  # the cumulative merged update
        self.stacks: list[Arrays] = []  # one stacked update per aggregated round
        self.delivered: dict[int, int] = {}  # how many stacks each client has merged
        return self

    def payload(self, client_id: int) -> Arrays:
        # every stack this client has not merged yet, concatenated (their sum, exactly)
        pending = self.stacks[self.delivered.get(client_id, 0) :]
        return agg.concat_ranks(pending) if pending else {}

    def mark_sent(self, client_id: int) -> None:
        self.delivered[client_id] = len(self.stacks)

    def fold(self, ids: list[int], uploads: PerClient, weights: list[float], eval_only: PerClient) -> None:
        states = [uploads[i] for i in ids]
        scalings = [client_scaling(self.cfg, i) for i in ids]
        before = {p: d.copy() for p, d in self.dense.items()}
        stack = agg.flora_stack(states, weights, scalings)
        self.stacks.append(stack)
        for prefix, delta in agg.delta_weights(stack).items():
            self.dense[prefix] = self.dense[prefix] + delta if prefix in self.dense else delta
        for i, sc in zip(ids, scalings):
            own = agg.delta_weights(uploads[i], sc)
            self.views[i] = ModelView(deltas={p: before.get(p, 0.0) + d for p, d in own.items()})

    def global_view(self) -> ModelView:
        return ModelView(deltas=dict(self.dense))
