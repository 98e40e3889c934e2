"""A multi-node Ray cluster on this machine, every server on 127.0.0.1, until interrupted.

`ray start --head` plus `ray start --address=...` is how a real cluster is made (README,
"Ray cluster"), but on one Linux host Ray accepts a second node only with its cluster switch
(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER) on, and then it maps 127.0.0.1 to the routable address and
listens on every interface. This script starts the same processes (a GCS and one raylet per node)
through Ray's own `ray.cluster_utils.Cluster` with the switch off, so all of them listen on
127.0.0.1 only. It prints `ADDRESS 127.0.0.1:PORT` and the node ids, then blocks; SIGTERM or
Ctrl-C shuts the cluster down. Every Ray process is its descendant, so a caller can also end the
whole tree by this process's id (tests/test_ray_cluster.py does).

  .venv/bin/python scripts/ray_local_cluster.py --nodes 2 --cpus-per-node 1
  .venv/bin/fedlora run configs/smoke.toml --set "simulation.ray_address='127.0.0.1:PORT'"
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=2, help="nodes, the head included (default 2)")
    ap.add_argument("--cpus-per-node", type=int, default=1)
    args = ap.parse_args()
    if args.nodes < 1 or args.cpus_per_node < 1:
        ap.error("--nodes and --cpus-per-node must be at least 1")
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # before ray is imported: 127.0.0.1 stays local
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from ray.cluster_utils import Cluster

    node = {"num_cpus": args.cpus_per_node, "num_gpus": 0, "node_ip_address": "127.0.0.1"}
    cluster = Cluster(initialize_head=True, connect=False, head_node_args={**node, "include_dashboard": False})
    for _ in range(args.nodes - 1):
        cluster.add_node(**node)
    cluster.wait_for_nodes()
    print(f"ADDRESS {cluster.address}", flush=True)
    for n in cluster.list_all_nodes():
        print(f"NODE {n.node_id}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    cluster.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
