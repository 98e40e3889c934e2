"""Which SuperNode holds which partition, and which partitions are online at a round.

Discovery (``discover``) starts the run once ``federation.min_clients`` SuperNodes are online
instead of waiting for every silo. Before each round ``refresh`` asks the grid who is online
(a SuperLink lists only nodes whose heartbeat is current) and queries every node it has not met
for its partition id, so a silo that joins late, or comes back under a new node id (a restarted
SuperNode without authentication), is sampled from the next round on. A node that dies during
a round is still sampled in it and counted as a failed reply (``RoundRecord.failures``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from fedlora.protocol import CONFIG, CONFIG_KEY, METRICS, PARTITION_ID, SILO_COUNT_PREFIX, WARM, integer
from fedlora.rounds import plain_reason

from .wire import exchange

DISCOVERY_TIMEOUT_S = 300.0
POLL_S = 0.5
logger = logging.getLogger("fedlora")


@dataclass(frozen=True)
class Presence:
    """The partitions online at a round, and how that differs from the round before."""

    online: list[int]
    joined: list[int]
    left: list[int]


class Membership:
    """node id <-> partition id, kept current as nodes come and go.

    ``config_text`` goes with every query so that a per-silo run's clients load their data when
    they are met (a bad data-path fails there, not in a round) and reply with their split sizes
    (``counts``: partition id -> split name -> size, all the server learns of a silo's data).
    In simulation it goes too, with ``warm``: each Ray worker then loads the model and the dataset
    during discovery rather than in round 1 (``clients.handlers.warm_shared``).
    """

    def __init__(
        self,
        expected: int,
        config_text: str | None = None,
        query_timeout: float = DISCOVERY_TIMEOUT_S,
        warm: bool = False,
    ):
        self.expected = expected
        self.config_text = config_text
        self.warm = warm  # ask each client to load its model and data now (simulation: its process outlives the query)
        self.query_timeout = query_timeout
        self.partition_of: dict[int, int] = {}  # node id -> partition id
        self.counts: dict[int, dict[str, int]] = {}
        self._online: list[int] = []
        self._grid: Grid | None = None  # the one discovery used (not a round's byte-counting wrapper)

    @property
    def node_of(self) -> dict[int, int]:
        return {pid: nid for nid, pid in self.partition_of.items()}

    def discover(self, grid: Grid, min_present: int, timeout: float = DISCOVERY_TIMEOUT_S) -> None:
        """Wait until ``min_present`` nodes are online, then ask each for its partition id.

        Strict, unlike ``refresh``: a node that fails the query or a partition id out of range or
        claimed twice ends the run before it starts (a misconfigured silo is named at once)."""
        self._grid = grid
        deadline = time.monotonic() + timeout
        node_ids = list(grid.get_node_ids())
        while len(node_ids) < min_present:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"only {len(node_ids)} of the {min_present} clients discovery waits for "
                    f"(federation.min_clients, 0 = all {self.expected}) connected within {timeout:.0f} s"
                )
            time.sleep(POLL_S)
            node_ids = list(grid.get_node_ids())
        replies = self._query(grid, node_ids, timeout)
        failed = [r for r in replies if r.has_error()]
        if failed or len(replies) != len(node_ids):
            reasons = [str(r.error.reason) for r in failed][:3]
            raise RuntimeError(
                f"client discovery: {len(replies) - len(failed)} of {len(node_ids)} answered; errors {reasons}"
            )
        found = {r.metadata.src_node_id: integer(r.content.metric_records[METRICS], PARTITION_ID) for r in replies}
        pids = sorted(found.values())
        if len(set(pids)) != len(pids) or not all(0 <= p < self.expected for p in pids):
            raise RuntimeError(
                f"clients report partition ids {pids}; expected each at most once, from 0..{self.expected - 1}"
            )
        for reply in replies:
            self._admit(reply)
        self._online = sorted(self.partition_of.values())

    def refresh(self, grid: Grid | None = None) -> Presence:
        """Who is online now; nodes not met before are queried and admitted (never raises: a node
        that cannot be admitted is logged and tried again at the next round). On discovery's grid by
        default: a join is no message of the round (its bytes and errors are not the round's)."""
        grid = grid or self._grid
        if grid is None:
            raise RuntimeError("Membership.refresh before discover")
        online_nodes = set(grid.get_node_ids())
        new = sorted(n for n in online_nodes if n not in self.partition_of)
        if new:
            for reply in self._query(grid, new, self.query_timeout):
                if reply.has_error():
                    logger.warning(
                        "node %s joined but its query failed: %s",
                        reply.metadata.src_node_id,
                        plain_reason(str(reply.error.reason)),
                    )
                    continue
                self._admit(reply, online_nodes)
        online = sorted(pid for nid, pid in self.partition_of.items() if nid in online_nodes)
        before = set(self._online)
        presence = Presence(online, sorted(set(online) - before), sorted(before - set(online)))
        self._online = online
        if presence.joined or presence.left:
            logger.warning("partitions online: %s (joined %s, left %s)", online, presence.joined, presence.left)
        return presence

    def _query(self, grid: Grid, node_ids: list[int], timeout: float) -> list[Message]:
        query = ConfigRecord({} if self.config_text is None else {CONFIG_KEY: self.config_text})
        if self.warm and self.config_text is not None:
            query[WARM] = True
        messages = [Message(RecordDict({CONFIG: query}), dst_node_id=n, message_type="query") for n in node_ids]
        return exchange(grid, messages, timeout)

    def _admit(self, reply: Message, online_nodes: set[int] | None = None) -> None:
        """Map the reply's node to its partition; a partition whose old node is offline moves to the new one."""
        node = reply.metadata.src_node_id
        metrics = reply.content.metric_records[METRICS]
        pid = integer(metrics, PARTITION_ID)
        if not 0 <= pid < self.expected:
            logger.warning("node %s reports partition %d, outside 0..%d: not used", node, pid, self.expected - 1)
            return
        holder = self.node_of.get(pid)
        if holder is not None and holder != node:
            if online_nodes is not None and holder in online_nodes:
                logger.warning("node %s reports partition %d, held by online node %s: not used", node, pid, holder)
                return
            del self.partition_of[holder]  # the silo came back under a new node id
        self.partition_of[node] = pid
        counts = {k[len(SILO_COUNT_PREFIX) :]: integer(metrics, k) for k in metrics if k.startswith(SILO_COUNT_PREFIX)}
        if counts:
            self.counts[pid] = counts
