"""Flower ClientApp (Message API): a thin adapter over ``fedlora.local_training``.

The experiment config arrives in every train message, so a client needs nothing but its
partition id (simulation: automatic; deployment: ``--node-config "partition-id=K"``).
Per-client state that must outlive a round (the objective's proxy attacker, the rule's kept
factors, the DP accountant) lives in ``context.state``. Records are converted to arrays once,
here, on the way in and on the way out.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import fixedclipping_mod

from fedlora.config import loads_config
from fedlora.local_training import client_round
from fedlora.protocol import (
    ARRAYS,
    CLIENT_STATE,
    CONFIG,
    CONFIG_KEY,
    DP_STATE,
    EVAL_ONLY_PREFIX,
    METRICS,
    NUM_EXAMPLES,
    OBJECTIVE_STATE,
    PARTITION_ID,
    RULE_STATE,
    integer,
)


def clipping_when_asked(msg: Message, context: Context, call_next: Any) -> Message:
    """Flower's client-side update clipping, only for runs whose server sends a clipping norm (dp-fedavg)."""
    from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

    if (
        msg.metadata.message_type.startswith("train")
        and CONFIG in msg.content
        and KEY_CLIPPING_NORM in msg.content.config_records[CONFIG]
    ):
        return fixedclipping_mod(msg, context, call_next)
    return call_next(msg, context)


app = ClientApp(mods=[clipping_when_asked])


def arrays_of(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: a.numpy() for k, a in record.items()}


def record_of(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def partition_id(context: Context) -> int:
    if PARTITION_ID not in context.node_config:
        raise KeyError(
            f'node_config has no {PARTITION_ID!r}; start the SuperNode with --node-config "{PARTITION_ID}=K"'
        )
    return int(context.node_config[PARTITION_ID])


@app.query()
def query(msg: Message, context: Context) -> Message:
    return Message(RecordDict({METRICS: MetricRecord({PARTITION_ID: partition_id(context)})}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    config = msg.content.config_records[CONFIG]
    cfg = loads_config(str(config[CONFIG_KEY]))
    torch.set_num_threads(cfg.simulation.num_cpus_per_client)
    pid = partition_id(context)
    server_round = integer(config, "server-round")
    state = context.state

    def tensors(key: str) -> dict[str, torch.Tensor] | None:
        return state.array_records[key].to_torch_state_dict() if key in state else None

    result = client_round(
        cfg,
        pid,
        arrays_of(msg.content.array_records[ARRAYS]),
        server_round,
        objective_state=tensors(OBJECTIVE_STATE),
        kept=arrays_of(state.array_records[RULE_STATE]) if RULE_STATE in state else None,
        dp_state=tensors(DP_STATE),
    )
    if result.objective_state:
        state[OBJECTIVE_STATE] = ArrayRecord(result.objective_state)
    if result.kept:
        state[RULE_STATE] = record_of(result.kept)
    if result.dp_state:
        state[DP_STATE] = ArrayRecord(result.dp_state)
    rounds_trained = integer(state.metric_records[CLIENT_STATE], "rounds-trained") if CLIENT_STATE in state else 0
    state[CLIENT_STATE] = MetricRecord({"rounds-trained": rounds_trained + 1, "last-round": server_round})
    metrics: dict[str, Any] = {
        NUM_EXAMPLES: result.stats.num_examples,
        PARTITION_ID: pid,
        "rounds_trained": rounds_trained + 1,
        **result.metrics,
    }
    # Flower expects one ArrayRecord per reply: audit-only arrays ride along under a key prefix
    arrays = {**result.upload, **{EVAL_ONLY_PREFIX + k: v for k, v in result.eval_only.items()}}
    return Message(RecordDict({ARRAYS: record_of(arrays), METRICS: MetricRecord(metrics)}), reply_to=msg)
