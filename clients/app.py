"""Flower ClientApp (Message API): Flower's plumbing around ``clients.handlers``, which does the work.

Each handler runs its body in this process, or, when the SuperNode's node config names a ``worker``
socket (deployment), in that silo's long-lived worker (``clients.worker``), which keeps the model, the
data and their encodings between rounds; this process then imports neither torch nor the model.
Flower's SecAgg+ and client-side clipping mods run here either way.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import fixedclipping_mod

from clients import worker
from fedlora.packing import is_packed, pack, unpack
from fedlora.protocol import CONFIG, METRICS, NODE_WORKER, PROCESS_AGE


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


def secagg_when_asked(msg: Message, context: Context, call_next: Any) -> Message:
    """Flower's SecAgg+ client side, only for the messages of its protocol (federation.secure_aggregation)."""
    from flwr.client.mod import secaggplus_mod
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

    if msg.metadata.message_type.startswith("train") and RECORD_KEY_CONFIGS in msg.content.config_records:
        return secaggplus_mod(msg, context, call_next)
    return call_next(msg, context)


app = ClientApp(mods=[secagg_when_asked, clipping_when_asked])


def process_age_s() -> float | None:
    """Seconds since this ClientApp process started (Linux), so a round's wall time can be split into
    Flower's delivery, the process's start-up and imports, set-up and training; None elsewhere."""
    try:
        after_name = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - int(after_name[19]) / os.sysconf("SC_CLK_TCK")  # field 22: start time in ticks
    except (OSError, ValueError, IndexError):
        return None


def run_body(body: str, content: RecordDict, context: Context) -> RecordDict:
    """``clients.handlers.<body>`` here, or on the silo's worker when the node config names one. A message
    whose adapter came packed into one array (``fedlora.packing``, deployment) is answered the same way."""
    packed = is_packed(content)
    content = unpack(content)
    path = context.node_config.get(NODE_WORKER)
    if path:
        reply = worker.call(str(path), body, content, context)
    else:
        reply = worker.default_bodies()[body](content, context)
    return pack(reply) if packed else reply


@app.query()
def query(msg: Message, context: Context) -> Message:
    return Message(run_body("query", msg.content, context), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    reply = run_body("train", msg.content, context)
    age = process_age_s()
    if age is not None and METRICS in reply.metric_records:  # not in SecAgg+'s legacy FitRes
        reply.metric_records[METRICS][PROCESS_AGE] = age
    return Message(reply, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return Message(run_body("evaluate", msg.content, context), reply_to=msg)
