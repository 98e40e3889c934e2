"""FedAvg of the LoRA factors (FedIT): the weighted mean of A and of B separately."""

from __future__ import annotations

import numpy as np

from .. import aggregation as agg
from ..models.lora import ModelView
from ..registry import RULES
from .base import Arrays, ClientSetup, PerClient, Rule, State


@RULES.register(
    "fedavg",
    reference="McMahan et al., AISTATS 2017; FedIT: Zhang et al., ICASSP 2024",
    description="down A, B; clients train A, B; up A, B; the server averages A and B separately",
)
class FedAvg(Rule):
    global_is_carried = True
    summable = True

    def client_setup(self, client_id: int, payload: State, kept: State, init: State) -> ClientSetup:
        return ClientSetup(dict(payload))

    def payload(self, client_id: int) -> Arrays:
        return dict(self.global_lora)

    def fold(self, ids: list[int], uploads: PerClient, weights: list[float], eval_only: PerClient) -> None:
        self.fold_mean(agg.fedavg([uploads[i] for i in ids], weights))
        self.record_views(ids, uploads, weights, eval_only)

    def fold_mean(self, mean: State) -> None:
        self.global_lora = {k: np.asarray(mean[k], dtype=np.float32) for k in self.initial}

    def global_view(self) -> ModelView:
        return ModelView(lora=dict(self.global_lora))
