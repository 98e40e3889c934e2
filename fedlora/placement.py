"""Where a client ran: the Ray node of a simulated client, recorded per round (metrics.jsonl ``ray_nodes``).

Member-independent, so it rides along under every DP mode; a deployment client (no Ray) reports none.
"""

from __future__ import annotations

import sys


def ray_node_id() -> str | None:
    """The id of the Ray node this process runs on, if it is a Ray worker (a simulated client)."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    return str(ray.get_runtime_context().get_node_id())
