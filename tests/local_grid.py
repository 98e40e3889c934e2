"""Flower's ``Grid`` in one process: every node is a direct ClientApp call with its own Context.

No Ray and no network, so a whole federation (ServerApp logic + ClientApp handlers) runs inside
the test process, where extensions registered by a test file are visible to both sides. As in
Flower's simulation engine, a ClientApp that raises answers with an error reply, and its
context keeps only what successful calls wrote.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from uuid import uuid4

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from fedlora.protocol import PARTITION_ID


class LocalGrid(Grid):
    def __init__(self, client_app: ClientApp, num_nodes: int):
        self.app = client_app
        self.contexts = {
            1000 + k: Context(
                run_id=1,
                node_id=1000 + k,
                node_config={PARTITION_ID: k, "num-partitions": num_nodes},
                state=RecordDict(),
                run_config={},
            )
            for k in range(num_nodes)
        }
        self._run = None
        self._replies: dict[str, Message] = {}
        # what a SuperLink-launched ServerApp process would know about itself
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1

    def set_run(self, run):  # type: ignore[no-untyped-def]
        self._run = run

    @property
    def run(self):  # type: ignore[no-untyped-def]
        return self._run

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = str(uuid4())
            node = msg.metadata.dst_node_id
            context = copy.deepcopy(self.contexts[node])
            try:  # a copy of the message, as if it had been serialised (the workflow shares one content)
                reply = self.app(copy.deepcopy(msg), context)
                self.contexts[node] = context
            except Exception as ex:  # what Flower's engine does with a raising ClientApp
                reply = Message(
                    Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=f"{type(ex)}:<'{ex}'>"), reply_to=msg
                )
            self._replies[msg.metadata.message_id] = reply
            ids.append(msg.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return list(self.pull_messages(self.push_messages(messages)))
