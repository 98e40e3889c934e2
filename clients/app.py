"""Flower ClientApp (Message API): a thin adapter over ``fedlora.local_training``.

The experiment config arrives in every train message, so a client needs nothing but its
partition id (simulation: automatic; deployment: ``--node-config "partition-id=K"``).
Per-client state that must outlive a round (the objective's, e.g. a proxy attacker) lives
in ``context.state``.
"""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import fixedclipping_mod

from fedlora.config import loads_config
from fedlora.local_training import client_round
from fedlora.protocol import (
    ARRAYS, CLIENT_STATE, CONFIG, CONFIG_KEY, DP_STATE, EVAL_ONLY_PREFIX, METRICS, NUM_EXAMPLES, OBJECTIVE_STATE, PARTITION_ID,
    RULE_STATE,
)


def clipping_when_asked(msg: Message, context: Context, call_next) -> Message:
    """Flower's client-side update clipping, only for runs whose server sends a clipping norm (dp-fedavg)."""
    from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

    if msg.metadata.message_type.startswith("train") and CONFIG in msg.content and KEY_CLIPPING_NORM in msg.content[CONFIG]:
        return fixedclipping_mod(msg, context, call_next)
    return call_next(msg, context)


app = ClientApp(mods=[clipping_when_asked])


def _state(context: Context, key: str) -> dict[str, torch.Tensor] | None:
    return context.state[key].to_torch_state_dict() if key in context.state else None


def partition_id(context: Context) -> int:
    if PARTITION_ID not in context.node_config:
        raise KeyError(f"node_config has no {PARTITION_ID!r}; start the SuperNode with --node-config \"{PARTITION_ID}=K\"")
    return int(context.node_config[PARTITION_ID])


@app.query()
def query(msg: Message, context: Context) -> Message:
    return Message(RecordDict({METRICS: MetricRecord({PARTITION_ID: partition_id(context)})}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg = loads_config(str(msg.content[CONFIG][CONFIG_KEY]))
    torch.set_num_threads(cfg.simulation.num_cpus_per_client)
    pid = partition_id(context)
    server_round = int(msg.content[CONFIG]["server-round"])
    payload = msg.content[ARRAYS].to_torch_state_dict()
    result = client_round(
        cfg, pid, payload, server_round,
        objective_state=_state(context, OBJECTIVE_STATE), kept=_state(context, RULE_STATE), dp_state=_state(context, DP_STATE),
    )
    for key, arrays in ((OBJECTIVE_STATE, result.objective_state), (RULE_STATE, result.kept), (DP_STATE, result.dp_state)):
        if arrays:
            context.state[key] = ArrayRecord(arrays)
    rounds_trained = int(context.state[CLIENT_STATE]["rounds-trained"]) if CLIENT_STATE in context.state else 0
    context.state[CLIENT_STATE] = MetricRecord({"rounds-trained": rounds_trained + 1, "last-round": server_round})
    s = result.stats
    metrics = {
        NUM_EXAMPLES: s.num_examples,
        PARTITION_ID: pid,
        "train_loss": s.loss_mean,
        "train_loss_first": s.loss_first,
        "train_loss_last": s.loss_last,
        "train_s": s.seconds,
        "steps": s.steps,
        "rounds_trained": rounds_trained + 1,
        **s.extra,
    }
    # Flower expects one ArrayRecord per reply: audit-only arrays ride along under a key prefix
    arrays = {**result.upload, **{EVAL_ONLY_PREFIX + k: v for k, v in result.eval_only.items()}}
    return Message(RecordDict({ARRAYS: ArrayRecord(arrays), METRICS: MetricRecord(metrics)}), reply_to=msg)
