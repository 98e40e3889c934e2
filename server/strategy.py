"""A FedAvg-shaped Flower strategy whose aggregation is one of ``fedlora.aggregation``'s rules.

Clients are addressed by partition id (not Flower's random node ids) so that sampling
and aggregation order, and therefore the numbers, are reproducible from the seed.
"""

from __future__ import annotations

import time
from typing import Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedlora.aggregation import aggregate

from fedlora.protocol import CONFIG_KEY, NUM_EXAMPLES, PARTITION_ID


def record_bytes(record: ArrayRecord) -> int:
    return int(sum(len(arr.data) for arr in record.values()))


class LoraStrategy(FedAvg):
    def __init__(self, *, rule: str, partition_of: dict[int, int], fraction: float, seed: int, config_text: str):
        n = len(partition_of)
        super().__init__(
            fraction_train=fraction,
            fraction_evaluate=0.0,
            min_train_nodes=1,
            min_available_nodes=n,
            weighted_by_key=NUM_EXAMPLES,
        )
        self.rule = rule
        self.partition_of = partition_of
        self.node_of = {pid: nid for nid, pid in partition_of.items()}
        self.seed = seed
        self.config_text = config_text
        self.rounds: dict[int, dict] = {}
        # partition id -> the adapter it last sent: the per-client targets of the leakage audit
        self.last_updates: dict[int, dict[str, np.ndarray]] = {}
        self._round_started = 0.0

    def sample_partitions(self, server_round: int) -> list[int]:
        pids = sorted(self.node_of)
        k = max(1, int(round(len(pids) * self.fraction_train)))
        rng = np.random.default_rng([self.seed, server_round, 7])
        return sorted(int(p) for p in rng.choice(pids, size=k, replace=False))

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        self._round_started = time.perf_counter()
        pids = self.sample_partitions(server_round)
        config["server-round"] = server_round
        config[CONFIG_KEY] = self.config_text
        self.rounds[server_round] = {"sampled": pids, "bytes_down_per_client": record_bytes(arrays)}
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return self._construct_messages(record, [self.node_of[p] for p in pids], "train")

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid, errors = self._check_and_log_replies(list(replies), is_train=True)
        info = self.rounds.setdefault(server_round, {})
        info["failures"] = [str(m.error.reason) for m in errors]
        if not valid:
            return None, None
        valid.sort(key=lambda m: int(m.content["metrics"][PARTITION_ID]))
        states = [{k: a.numpy() for k, a in m.content[self.arrayrecord_key].items()} for m in valid]
        weights = [float(m.content["metrics"][NUM_EXAMPLES]) for m in valid]
        for m, state in zip(valid, states):
            self.last_updates[int(m.content["metrics"][PARTITION_ID])] = state
        merged = aggregate(self.rule, states, weights)
        info["clients"] = {
            str(int(m.content["metrics"][PARTITION_ID])): {k: v for k, v in m.content["metrics"].items() if k != PARTITION_ID}
            for m in valid
        }
        info["bytes_up_per_client"] = float(np.mean([record_bytes(m.content[self.arrayrecord_key]) for m in valid]))
        info["round_s"] = time.perf_counter() - self._round_started
        metrics = self.train_metrics_aggr_fn([m.content for m in valid], self.weighted_by_key)
        arrays = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in merged.items()})
        return arrays, metrics
