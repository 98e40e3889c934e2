"""A FedAvg-shaped Flower strategy that delegates payloads and aggregation to a ``fedlora.rules.Rule``.

Clients are addressed by partition id (not Flower's random node ids) so that sampling and
aggregation order, and therefore the numbers, are reproducible from the seed. A round samples
among the partitions online at its start (``server.membership``; in simulation, all of them). Each client gets
its own payload (FlexLoRA truncates to its rank; FLoRA sends the stacks it has not merged).
Records are converted to numpy arrays once, here; everything the server learns of a round goes
into the ``RoundLog``.

Every reply is screened before it is aggregated (``screen_replies``, with the checks of
``fedlora.update_validation``): a failed or missing reply and a rejected update are logged with
their reason and left out, and a round with fewer than ``federation.min_clients_per_round``
accepted updates is skipped (the global model stays as it was). A round in which no client's
update was accepted stops the run once that round is recorded (``stop_if_no_client_left``).
"""

from __future__ import annotations

import logging
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
    PLACEMENT,
    RAY_NODE_ID,
    RUN_KEY,
    STATE_DIR,
    integer,
    number,
)
from fedlora.rounds import RoundLog, plain_reason
from fedlora.rules import Rule
from fedlora.update_validation import MALFORMED, Rejection, Reply, screen

from .membership import Membership

logger = logging.getLogger("fedlora")


def record_bytes(record: ArrayRecord) -> int:
    return int(sum(len(arr.data) for arr in record.values()))


def to_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def to_numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: a.numpy() for k, a in record.items()}


class LoraStrategy(FedAvg):
    samples_online_only = True  # a round samples among the partitions online at its start

    def __init__(
        self,
        *,
        rule: Rule,
        log: RoundLog,
        partition_of: dict[int, int],
        fraction: float,
        seed: int,
        config_text: str,
        max_update_norm: float = 0.0,
        min_clients: int = 1,
        num_clients: int | None = None,
    ):
        n = len(partition_of) if num_clients is None else num_clients
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
        self.max_update_norm = max_update_norm
        self.min_clients = min_clients
        self.num_clients = n  # the federation's size (config), whoever is online
        self.membership: Membership | None = None  # the ServerApp's: who is online at each round
        self.sent: dict[int, dict[str, np.ndarray]] = {}  # this round's payload of each sampled client
        self.stop_reason: str | None = None  # set when a round had no accepted update
        self._round_started = 0.0
        self._current_round = 0
        self._messages_sent: list[Message] = []
        self.client_state_dir: str | None = None  # simulation: clients save their state there (resume)
        self.run_key = ""  # the run's own id (RUN_KEY): a SuperNode's state-dir folder for this run

    def round_config(self, server_round: int) -> dict[str, str | int]:
        """What every train message of the round carries besides the payload."""
        config: dict[str, str | int] = {"server-round": server_round, CONFIG_KEY: self.config_text}
        if self.client_state_dir:
            config[STATE_DIR] = self.client_state_dir
        if self.run_key:
            config[RUN_KEY] = self.run_key
        return config

    @property
    def num_sampled(self) -> int:
        """Clients per round with the whole federation online (what central DP's noise is sized for)."""
        return max(1, int(round(self.num_clients * self.fraction_train)))

    def available_partitions(self, server_round: int) -> list[int]:
        """The partitions this round may sample: those online now (nodes met since are admitted, the
        round's record gets ``online``/``joined``/``left``), or every known one without a membership."""
        if self.membership is None:
            return sorted(self.node_of)
        presence = self.membership.refresh()
        self.partition_of = self.membership.partition_of
        self.node_of = self.membership.node_of
        entry = self.log[server_round]
        entry.online, entry.joined, entry.left = presence.online, presence.joined, presence.left
        return presence.online if self.samples_online_only else sorted(self.node_of)

    def sample_partitions(self, server_round: int, available: list[int] | None = None) -> list[int]:
        """``fraction_train`` of the available partitions (default: all known), seeded by (seed, round)."""
        pids = sorted(self.node_of if available is None else available)
        if not pids:
            return []
        size = max(1, int(round(len(pids) * self.fraction_train)))
        rng = np.random.default_rng([self.seed, server_round, 7])
        return sorted(int(p) for p in rng.choice(pids, size=size, replace=False))

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
        pids = self.sample_partitions(server_round, self.available_partitions(server_round))
        for key, value in self.round_config(server_round).items():
            config[key] = value
        messages, down = [], []
        self.sent = {}
        for pid in pids:
            self.sent[pid] = self.rule.payload(pid)
            record = to_record(self.sent[pid])
            self.rule.mark_sent(pid)
            down.append(record_bytes(record))  # serialised size, as for the uploads
            content = RecordDict({self.arrayrecord_key: record, self.configrecord_key: config})
            messages.append(Message(content=content, message_type="train", dst_node_id=self.node_of[pid]))
        entry = self.log[server_round]
        entry.sampled, entry.bytes_down_per_client = pids, float(np.mean(down)) if down else None
        self._messages_sent = messages  # the grid gives each its id when it pushes it
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
        nodes = {
            str(integer(c.metric_records[METRICS], PARTITION_ID)): str(c.config_records[PLACEMENT][RAY_NODE_ID])
            for c in contents
            if PLACEMENT in c.config_records and RAY_NODE_ID in c.config_records[PLACEMENT]
        }
        entry.ray_nodes = nodes or None
        entry.bytes_up_per_client = float(np.mean(up_bytes))
        if eval_bytes:
            entry.bytes_eval_only_per_client = float(np.mean(eval_bytes))
        entry.round_s = time.perf_counter() - self._round_started
        return uploads, weights, eval_only

    # ---- screening ----------------------------------------------------------------------

    def _read(self, index: int, message: Message) -> Reply | Rejection:
        """A successful reply's claims and arrays, or why they cannot be read."""
        node = message.metadata.src_node_id
        sender = self.partition_of.get(node)
        who = f"node {node}" if sender is None else f"partition {sender}"
        content = message.content
        try:
            if list(content.array_records) != [self.arrayrecord_key] or list(content.metric_records) != [METRICS]:
                raise ValueError(
                    f"expected one ArrayRecord {self.arrayrecord_key!r} and one MetricRecord {METRICS!r}, got "
                    f"{list(content.array_records)} and {list(content.metric_records)}"
                )
            metrics = content.metric_records[METRICS]
            pid, weight = integer(metrics, PARTITION_ID), number(metrics, NUM_EXAMPLES)
            arrays = to_numpy(content.array_records[self.arrayrecord_key])
        except (KeyError, TypeError, ValueError) as err:
            return Rejection(who, MALFORMED, plain_reason(str(err)))
        upload = {k: v for k, v in arrays.items() if not k.startswith(EVAL_ONLY_PREFIX)}
        audit = {k[len(EVAL_ONLY_PREFIX) :]: v for k, v in arrays.items() if k.startswith(EVAL_ONLY_PREFIX)}
        return Reply(partition=pid, upload=upload, weight=weight, sender=sender, index=index, audit=audit)

    def _replier(self, message: Message) -> int:
        """The node a reply stands for: its sender, or, for an error the SuperLink wrote in a node's place
        (``Node Unavailable``: sent from the SuperLink's own id), the node the message had been sent to."""
        node = message.metadata.src_node_id
        if node in self.partition_of:
            return node
        sent = {m.metadata.message_id: m.metadata.dst_node_id for m in self._messages_sent}
        return sent.get(message.metadata.reply_to_message_id, node)

    def screen_replies(self, server_round: int, replies: Iterable[Message]) -> list[Message]:
        """The replies whose updates may be aggregated, in partition order; records and logs the rest.

        Empty when the round must be skipped (``RoundRecord.skipped`` says why).
        """
        replies = list(replies)
        entry = self.log[server_round]
        sampled = entry.sampled if entry.sampled is not None else sorted(self.node_of)
        errors = [m for m in replies if m.has_error()]
        entry.failures = [
            f"partition {self.partition_of.get(self._replier(m), '?')}: {plain_reason(str(m.error.reason))}"
            for m in errors
        ]
        answered = {self.partition_of.get(self._replier(m)) for m in replies}
        entry.failures += [
            f"partition {p}: no reply within the round's timeout (federation.round_timeout_s)"
            for p in sampled
            if p not in answered
        ]
        read = [self._read(i, m) for i, m in enumerate(replies) if not m.has_error()]
        malformed = [r for r in read if isinstance(r, Rejection)]
        accepted, rejected = screen(
            [r for r in read if isinstance(r, Reply)],
            sampled=sampled,
            expected=self.rule.expected_upload,
            sent=lambda pid: self.sent.get(pid, {}),
            max_norm=self.max_update_norm,
            expected_audit=self.rule.expected_eval_only,
        )
        entry.rejected = [r.line() for r in malformed + rejected]
        for line in entry.failures:
            logger.warning("round %d: failed reply, %s", server_round, line)
        for line in entry.rejected:
            logger.warning("round %d: update rejected, %s", server_round, line)
        entry.round_s = time.perf_counter() - self._round_started
        if len(accepted) < self.min_clients:
            self._skip(server_round, len(accepted), len(sampled))
            return []
        valid = [replies[r.index] for r in accepted]
        _keep_shared_metrics(server_round, valid)
        return valid

    def _skip(self, server_round: int, accepted: int, sampled: int) -> None:
        entry = self.log[server_round]
        if accepted == 0:
            entry.skipped = f"no accepted update: none of the {sampled} sampled clients' updates was accepted"
            reasons = (entry.failures or []) + (entry.rejected or [])
            self.stop_reason = (
                f"round {server_round}: every one of the {sampled} sampled clients failed or was rejected, so the run "
                f"stops here instead of running the remaining rounds; first reasons: {'; '.join(reasons[:3])}"
            )
        else:
            entry.skipped = (
                f"too few accepted updates: {accepted} of {sampled} sampled clients' updates were accepted, fewer "
                f"than federation.min_clients_per_round = {self.min_clients}; the global model is unchanged"
            )
        logger.warning("round %d skipped: %s", server_round, entry.skipped)

    def stop_if_no_client_left(self) -> None:
        """Raise once a round had no accepted update (called after that round is recorded)."""
        if self.stop_reason is not None:
            raise RuntimeError(self.stop_reason)

    # ---- aggregation --------------------------------------------------------------------

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        self._check_and_log_replies(replies, is_train=True, validate=False)  # Flower's log lines
        valid = self.screen_replies(server_round, replies)
        if not valid:
            return None, None
        contents = [m.content for m in valid]
        uploads, weights, eval_only = self.record_replies(server_round, contents)
        self.rule.aggregate(uploads, weights, eval_only)
        metrics = self.train_metrics_aggr_fn(contents, self.weighted_by_key)
        return to_record(self.rule.carried()), metrics


class AccountedFedAvgStrategy(LoraStrategy):
    """LoRA FedAvg that Flower's DP wrappers accept for accounting: Flower's own aggregate_train.

    The wrappers account only for a strategy using ``FedAvg.aggregate_train`` (uniform weights);
    the bookkeeping (per-client metrics, the updates the server saw) runs in the metrics hook.
    The wrapper (``fedlora.privacy.dp.dp_fedavg``) calls ``screen_replies`` before it counts
    and clips the replies, so a rejected update is never aggregated.
    """

    aggregate_train = FedAvg.aggregate_train
    # Flower's accountant sizes the noise and the privacy event for num_sampled of the whole population:
    # every known partition is sampled, online or not (an offline one fails the round, which is not released)
    samples_online_only = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.train_metrics_aggr_fn = self._record_and_aggregate_metrics

    def _record_and_aggregate_metrics(self, contents: list[RecordDict], weighting_key: str) -> MetricRecord:
        contents = sorted(contents, key=lambda c: integer(c.metric_records[METRICS], PARTITION_ID))
        uploads, _, _ = self.record_replies(self._current_round, contents)
        self.rule.observe(uploads)
        return aggregate_metricrecords(contents, weighting_key)


def _keep_shared_metrics(server_round: int, replies: list[Message]) -> None:
    """Metrics not every accepted reply carries are left out of the round's aggregate: Flower refuses
    replies whose metric keys differ (it ends the run), and a client's extra metric is no reason to drop its update."""
    records = [m.content.metric_records[METRICS] for m in replies]
    shared = set.intersection(*(set(r) for r in records)) if records else set()
    for message, record in zip(replies, records):
        extra = sorted(set(record) - shared)
        if extra:
            pid = record[PARTITION_ID]
            logger.warning(
                "round %d: partition %s's metrics %s are not aggregated (not every client sent them)",
                server_round,
                pid,
                extra,
            )
            message.content[METRICS] = MetricRecord({k: v for k, v in record.items() if k in shared})
