"""FlexLoRA-style: the server keeps the exact weighted mean update and sends each client its
rank-rₖ SVD truncation (clients may train different ranks)."""

from __future__ import annotations

import numpy as np

from .. import aggregation as agg
from ..models.lora import ModelView
from ..registry import RULES
from .base import Arrays, ClientSetup, PerClient, Rule, State, client_rank, client_scaling


@RULES.register(
    "svd",
    reference="Bai et al. (FlexLoRA), NeurIPS 2024",
    description="down the rank-rₖ SVD of the mean update; clients train A, B; up A, B; heterogeneous ranks",
)
class SvdRefactor(Rule):
    heterogeneous_ranks = True
    not_summable = "svd forms each client's product B_k A_k on the server from its own factors (of its own rank)"

    def client_setup(self, client_id: int, payload: State, kept: State, init: State) -> ClientSetup:
        return ClientSetup(agg.fill_dead_directions(payload, init))

    def start(self, initial: State) -> Rule:
        super().start(initial)
        self.dense: dict[str, np.ndarray] = {}  # the exact weighted mean update
        self._payloads: dict[int, Arrays] = {}  # rank -> its truncation, until the next aggregation
        return self

    def payload(self, client_id: int) -> Arrays:
        rank = client_rank(self.cfg, client_id)
        if rank not in self._payloads:
            target = self.dense or {p: np.zeros((b.shape[0], a[0].size)) for p, (a, b) in self.like.items()}
            self._payloads[rank] = agg.truncate(
                target, [rank], self.like, out_scalings=[client_scaling(self.cfg, client_id)]
            )[0]
        return self._payloads[rank]

    def fold(self, ids: list[int], uploads: PerClient, weights: list[float], eval_only: PerClient) -> None:
        self._payloads = {}
        states = [uploads[i] for i in ids]
        scalings = [client_scaling(self.cfg, i) for i in ids]
        self.dense = agg.mean_delta(states, weights, scalings)
        self.views.update({i: ModelView(deltas=agg.delta_weights(uploads[i], sc)) for i, sc in zip(ids, scalings)})

    def global_view(self) -> ModelView:
        return ModelView(deltas=dict(self.dense))
