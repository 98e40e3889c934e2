"""FFA-LoRA: A frozen at the shared seeded init, only B trained and averaged (exact mean update)."""

from __future__ import annotations

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

    def client_setup(self, client_id: int, payload: State, kept: State, init: State) -> ClientSetup:
        return ClientSetup({**factor(init, "A"), **factor(payload, "B")})

    def payload(self, client_id: int) -> Arrays:
        return factor(self.global_lora, "B")

    def fold(self, ids: list[int], uploads: PerClient, weights: list[float], eval_only: PerClient) -> None:
        a = factor(self.global_lora, "A")
        states = [{**a, **factor(uploads[i], "B")} for i in ids]
        self.global_lora = agg.ffa(states, weights)
        self.views.update({i: ModelView(lora=s) for i, s in zip(ids, states)})

    def global_view(self) -> ModelView:
        return ModelView(lora=dict(self.global_lora))
