"""Bytes on the wire: a Grid that counts the serialised content of every message it carries.

Counts what the protocol sends, config records and key shares included (the strategy's own
``bytes_*`` fields count only the arrays), so that plain and SecAgg+ rounds compare like for like.
On the deployment engine it also collects replies sooner (``exchange``): flwr 1.42's ``HttpGrid``
looks for replies every 3 s, which added up to 3 s to every exchange of a round; and it sends each
message's adapter as one array (``fedlora.packing``) instead of one object per tensor.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterable

from flwr.app import Message, RecordDict
from flwr.common.serde import recorddict_to_proto
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.superlink.grid.http_grid import HttpGrid

from fedlora.packing import pack, unpack
from fedlora.rounds import plain_reason

PULL_S = 0.2  # how often the deployment's replies are looked for


def exchange(
    grid: Grid,
    messages: Iterable[Message],
    timeout: float | None = None,
    on_wire: Callable[[list[Message], list[Message]], None] | None = None,
) -> list[Message]:
    """``grid.send_and_receive``: the same semantics (every reply, or those in by ``timeout`` s; None: wait for
    all), but on the deployment engine it pulls every ``PULL_S`` s instead of every 3 s and packs each adapter
    into one array (the replies come back unpacked). ``on_wire`` sees the messages and replies as they travel."""
    messages = list(messages)
    if not isinstance(grid, HttpGrid):  # simulation's InMemoryGrid pulls every 0.1 s; test grids answer at once
        replies = list(grid.send_and_receive(messages, timeout=timeout))
        if on_wire is not None:
            on_wire(messages, replies)
        return replies
    for msg in messages:
        msg.content = pack(msg.content)
    pending = set(grid.push_messages(messages))
    deadline = None if timeout is None else time.monotonic() + timeout
    replies = []
    while pending:
        got = list(grid.pull_messages(pending))
        replies += got
        pending -= {reply.metadata.reply_to_message_id for reply in got}
        if not pending or (deadline is not None and time.monotonic() >= deadline):
            break
        time.sleep(PULL_S)
    if on_wire is not None:
        on_wire(messages, replies)
    for reply in replies:
        if not reply.has_error():
            reply.content = unpack(reply.content)
    return replies


def content_bytes(content: RecordDict) -> int:
    return int(recorddict_to_proto(content).ByteSize())


class CountingGrid(Grid):
    def __init__(self, grid: Grid):
        self.inner = grid
        self.down: dict[int, int] = defaultdict(int)
        self.up: dict[int, int] = defaultdict(int)
        self.errors: dict[int, str] = {}  # node id -> the first error it replied with (cleared by the caller)

    # ---- counting ------------------------------------------------------------------------

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        messages = list(messages)
        replies = exchange(self.inner, messages, timeout, on_wire=self._count)
        answered = {reply.metadata.src_node_id for reply in replies}
        for msg in messages:
            if msg.metadata.dst_node_id not in answered:
                self.errors.setdefault(msg.metadata.dst_node_id, f"no reply within {timeout} s")
        return replies

    def _count(self, messages: list[Message], replies: list[Message]) -> None:
        """The serialised content as it travels (packed, on the deployment engine)."""
        for msg in messages:
            self.down[msg.metadata.dst_node_id] += content_bytes(msg.content)
        for reply in replies:
            if reply.has_error():
                self.errors.setdefault(reply.metadata.src_node_id, plain_reason(str(reply.error.reason)))
            else:
                self.up[reply.metadata.src_node_id] += content_bytes(reply.content)

    def take(self) -> dict[str, float]:
        """Mean bytes per client messaged since the last call, then reset."""
        out = {}
        if self.down:
            out["wire_bytes_down_per_client"] = sum(self.down.values()) / len(self.down)
        if self.up:
            out["wire_bytes_up_per_client"] = sum(self.up.values()) / len(self.up)
        self.down.clear()
        self.up.clear()
        return out

    # ---- the rest is the wrapped grid's ----------------------------------------------------

    def set_run(self, run: Run) -> None:
        self.inner.set_run(run)

    @property
    def run(self) -> Run:
        return self.inner.run

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None
    ) -> Message:
        return self.inner.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.inner.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.inner.pull_messages(message_ids)
