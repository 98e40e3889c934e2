"""A FedAvg-shaped Flower strategy that delegates payloads and aggregation to a ``fedlora.rules.Rule``.

Clients are addressed by partition id (not Flower's random node ids) so that sampling and
aggregation order, and therefore the numbers, are reproducible from the seed. Each client gets
its own payload (FlexLoRA truncates to its rank; FLoRA sends the stacks it has not merged).
Records are converted to numpy arrays once, here; everything the server learns of a round goes
into the ``RoundLog``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from fedlora.protocol import (
    CONFIG_KEY,
    EVAL_ONLY_PREFIX,
    METRICS,
    NUM_EXAMPLES,
    PARTITION_ID,
    STATE_DIR,
    integer,
    number,
)
from fedlora.rounds import RoundLog, plain_reason
from fedlora.rules import Rule


def record_bytes(record: ArrayRecord) -> int:
    return int(sum(len(arr.data) for arr in record.values()))


def to_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def to_numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: a.numpy() for k, a in record.items()}


def partition_of_reply(message: Message) -> int:
    return -1 if message.has_error() else integer(message.content.metric_records[METRICS], PARTITION_ID)


class LoraStrategy(FedAvg):
    def __init__(
        self, *, rule: Rule, log: RoundLog, partition_of: dict[int, int], fraction: float, seed: int, config_text: str
    ):
        n = len(partition_of)
        super().__init__(
            fraction_train=fraction,
            fraction_evaluate=0.0,
            min_train_nodes=1,
            min_available_nodes=n,
            weighted_by_key=NUM_EXAMPLES,
        )
        self.rule = rule
        self.log = log
        self.partition_of = partition_of
        self.node_of = {pid: nid for nid, pid in partition_of.items()}
        self.seed = seed
        self.config_text = config_text
        self._round_started = 0.0
        self._current_round = 0
        self.client_state_dir: str | None = None  # simulation: clients save their state there (resume)

    def round_config(self, server_round: int) -> dict[str, str | int]:
        """What every train message of the round carries besides the payload."""
        config: dict[str, str | int] = {"server-round": server_round, CONFIG_KEY: self.config_text}
        if self.client_state_dir:
            config[STATE_DIR] = self.client_state_dir
        return config

    @property
    def num_sampled(self) -> int:
        return max(1, int(round(len(self.node_of) * self.fraction_train)))

    def sample_partitions(self, server_round: int) -> list[int]:
        pids = sorted(self.node_of)
        rng = np.random.default_rng([self.seed, server_round, 7])
        return sorted(int(p) for p in rng.choice(pids, size=self.num_sampled, replace=False))

    def sync_global(self, arrays: ArrayRecord) -> None:
        """The rule takes what Flower carries between rounds (central DP's noise included)."""
        if self.rule.global_is_carried and len(arrays):
            self.rule.sync(to_numpy(arrays))

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._round_started = time.perf_counter()
        self._current_round = server_round
        self.sync_global(arrays)
        pids = self.sample_partitions(server_round)
        for key, value in self.round_config(server_round).items():
            config[key] = value
        messages, down = [], []
        for pid in pids:
            record = to_record(self.rule.payload(pid))
            self.rule.mark_sent(pid)
            down.append(record_bytes(record))  # serialised size, as for the uploads
            content = RecordDict({self.arrayrecord_key: record, self.configrecord_key: config})
            messages.append(Message(content=content, message_type="train", dst_node_id=self.node_of[pid]))
        entry = self.log[server_round]
        entry.sampled, entry.bytes_down_per_client = pids, float(np.mean(down))
        return messages

    def record_replies(self, server_round: int, contents: list[RecordDict]) -> tuple[dict, dict, dict]:
        """Per-client uploads, weights, evaluation-only arrays; logs metrics and bytes for the round."""
        entry = self.log[server_round]
        uploads, weights, eval_only = {}, {}, {}
        up_bytes, eval_bytes = [], []
        for content in contents:
            metrics = content.metric_records[METRICS]
            pid = integer(metrics, PARTITION_ID)
            record = content.array_records[self.arrayrecord_key]
            protocol = ArrayRecord({k: a for k, a in record.items() if not k.startswith(EVAL_ONLY_PREFIX)})
            audit = ArrayRecord(
                {k[len(EVAL_ONLY_PREFIX) :]: a for k, a in record.items() if k.startswith(EVAL_ONLY_PREFIX)}
            )
            uploads[pid] = to_numpy(protocol)
            weights[pid] = number(metrics, NUM_EXAMPLES)
            up_bytes.append(record_bytes(protocol))
            if len(audit):
                eval_only[pid] = to_numpy(audit)
                eval_bytes.append(record_bytes(audit))
        replies = [c.metric_records[METRICS] for c in contents]
        entry.clients = {
            str(integer(m, PARTITION_ID)): {k: v for k, v in m.items() if k != PARTITION_ID} for m in replies
        }
        entry.bytes_up_per_client = float(np.mean(up_bytes))
        if eval_bytes:
            entry.bytes_eval_only_per_client = float(np.mean(eval_bytes))
        entry.round_s = time.perf_counter() - self._round_started
        return uploads, weights, eval_only

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid, errors = self._check_and_log_replies(list(replies), is_train=True)
        self.log[server_round].failures = [plain_reason(str(m.error.reason)) for m in errors]
        if not valid:
            return None, None
        valid.sort(key=partition_of_reply)
        contents = [m.content for m in valid]
        uploads, weights, eval_only = self.record_replies(server_round, contents)
        self.rule.aggregate(uploads, weights, eval_only)
        metrics = self.train_metrics_aggr_fn(contents, self.weighted_by_key)
        return to_record(self.rule.carried()), metrics


class AccountedFedAvgStrategy(LoraStrategy):
    """LoRA FedAvg that Flower's DP wrappers accept for accounting: Flower's own aggregate_train.

    The wrappers account only for a strategy using ``FedAvg.aggregate_train`` (uniform weights);
    the bookkeeping (per-client metrics, the updates the server saw) runs in the metrics hook.
    """

    aggregate_train = FedAvg.aggregate_train

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.train_metrics_aggr_fn = self._record_and_aggregate_metrics

    def _record_and_aggregate_metrics(self, contents: list[RecordDict], weighting_key: str) -> MetricRecord:
        contents = sorted(contents, key=lambda c: integer(c.metric_records[METRICS], PARTITION_ID))
        uploads, _, _ = self.record_replies(self._current_round, contents)
        self.rule.observe(uploads)
        return aggregate_metricrecords(contents, weighting_key)
