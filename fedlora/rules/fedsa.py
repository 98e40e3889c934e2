"""FedSA-LoRA: A shared and averaged; every B stays on its client (personalised models)."""

from __future__ import annotations

import numpy as np

from .. import aggregation as agg
from ..models.lora import ModelView
from ..registry import RULES
from .base import Arrays, ClientSetup, PerClient, Rule, State, factor


@RULES.register(
    "fedsa",
    reference="Guo et al., ICLR 2025",
    description="down A; clients train A, B; up A; each client keeps its own B",
)
class FedSA(Rule):
    upload = ("A",)
    summable = True

    def client_setup(self, client_id: int, payload: State, kept: State, init: State) -> ClientSetup:
        b = factor(kept, "B") or factor(init, "B")
        return ClientSetup({**factor(payload, "A"), **b})

    def client_keep(self, trained: State, setup: ClientSetup) -> Arrays:
        return factor(trained, "B")

    def client_eval_only(self, kept: State) -> Arrays:
        return dict(kept)  # B, shown to the simulation's audit only

    def expected_eval_only(self, client_id: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """Each client's own B, from which the audited global model (the personalised average) is built."""
        return {k: (tuple(v.shape), v.dtype) for k, v in factor(self.initial, "B").items()}

    def start(self, initial: State) -> Rule:
        super().start(initial)
        self.dense: dict[str, np.ndarray] = {}  # the average of the personalised updates Bₖ·A
        return self

    def payload(self, client_id: int) -> Arrays:
        return factor(self.global_lora, "A")

    def fold(self, ids: list[int], uploads: PerClient, weights: list[float], eval_only: PerClient) -> None:
        self.fold_mean(agg.fedsa([uploads[i] for i in ids], weights))
        self.record_views(ids, uploads, weights, eval_only)

    def fold_mean(self, mean: State) -> None:
        merged = {**factor(mean, "A"), **factor(self.global_lora, "B")}
        self.global_lora = {k: np.asarray(merged[k], dtype=np.float32) for k in self.initial}

    def record_views(self, ids: list[int], uploads: PerClient, weights: list[float], eval_only: PerClient) -> None:
        """The personalised models (Aₖ, Bₖ) and their average update, from the audit-only Bₖ."""
        if any(not factor(eval_only.get(i, {}), "B") for i in ids):
            return
        # evaluation only: the personalised models (Aₖ, Bₖ) and their average update
        personal = [{**factor(uploads[i], "A"), **factor(eval_only[i], "B")} for i in ids]
        s = self.cfg.model.lora_alpha / self.cfg.model.lora_rank
        self.views.update({i: ModelView(deltas=agg.delta_weights(p, s)) for i, p in zip(ids, personal)})
        shared_a = factor(self.global_lora, "A")
        self.dense = agg.mean_delta([{**shared_a, **factor(eval_only[i], "B")} for i in ids], weights, [s] * len(ids))

    def global_view(self) -> ModelView:
        return ModelView(deltas=dict(self.dense))
