"""FFA-LoRA: A frozen at the shared seeded init, only B trained and averaged (exact mean update)."""

from __future__ import annotations

import numpy as np

from .. import aggregation as agg
from ..models.lora import ModelView
from ..registry import RULES
from .base import Arrays, ClientSetup, PerClient, Rule, State, factor


@RULES.register(
    "ffa",
    reference="Sun et al., ICLR 2024",
    description="down B (A is the run seed's); clients train B; up B; mean of B = the exact mean update",
)
class FFA(Rule):
    train_a = False
    upload = ("B",)
    summable = True

    def client_setup(self, client_id: int, payload: State, kept: State, init: State) -> ClientSetup:
        return ClientSetup({**factor(init, "A"), **factor(payload, "B")})

    def payload(self, client_id: int) -> Arrays:
        return factor(self.global_lora, "B")

    def fold(self, ids: list[int], uploads: PerClient, weights: list[float], eval_only: PerClient) -> None:
        self.global_lora = agg.ffa(self._with_a(uploads, ids), weights)
        self.record_views(ids, uploads, weights, eval_only)

    def _with_a(self, uploads: PerClient, ids: list[int]) -> list[Arrays]:
        a = factor(self.global_lora, "A")
        return [{**a, **factor(uploads[i], "B")} for i in ids]

    def fold_mean(self, mean: State) -> None:
        merged = {**factor(self.global_lora, "A"), **factor(mean, "B")}
        self.global_lora = {k: np.asarray(merged[k], dtype=np.float32) for k in self.initial}

    def record_views(self, ids: list[int], uploads: PerClient, weights: list[float], eval_only: PerClient) -> None:
        self.views.update({i: ModelView(lora=s) for i, s in zip(ids, self._with_a(uploads, ids))})

    def global_view(self) -> ModelView:
        return ModelView(lora=dict(self.global_lora))
