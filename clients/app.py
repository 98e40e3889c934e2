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

from fedlora.config import loads_config
from fedlora.local_training import client_round
from fedlora.protocol import ARRAYS, CLIENT_STATE, CONFIG, CONFIG_KEY, METRICS, NUM_EXAMPLES, OBJECTIVE_STATE, PARTITION_ID

app = ClientApp()


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
    global_state = msg.content[ARRAYS].to_torch_state_dict()
    objective_state = context.state[OBJECTIVE_STATE].to_torch_state_dict() if OBJECTIVE_STATE in context.state else None
    result = client_round(cfg, pid, global_state, server_round, objective_state)
    if result.objective_state:
        context.state[OBJECTIVE_STATE] = ArrayRecord(result.objective_state)
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
    return Message(RecordDict({ARRAYS: ArrayRecord(result.state), METRICS: MetricRecord(metrics)}), reply_to=msg)
