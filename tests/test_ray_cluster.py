"""fedlora on a two-node Ray cluster on 127.0.0.1 (`simulation.ray_address`): clients run on both nodes.

scripts/ray_local_cluster.py starts the cluster (a head and a second node, 1 CPU each, so the
two client actors cannot share a node; every Ray server on 127.0.0.1); the test ends it and
every descendant by id, as tests/test_deployment.py does for Flower's processes.
"""

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from test_deployment import stop

from fedlora.outputs import METRICS_FILE

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def wait_for_cluster(proc: subprocess.Popen, timeout: float) -> tuple[str, set[str]]:
    """The ``ADDRESS`` and ``NODE`` lines the script prints once every node is up."""
    lines: list[str] = []
    assert proc.stdout is not None
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()  # type: ignore[arg-type]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        address = next((line.split()[1] for line in list(lines) if line.startswith("ADDRESS ")), "")
        nodes = {line.split()[1] for line in list(lines) if line.startswith("NODE ")}
        if address and len(nodes) == 2:
            return address, nodes
        time.sleep(1)
    raise AssertionError(f"the Ray cluster did not come up within {timeout:.0f} s: {''.join(lines)[-2000:]}")


@pytest.mark.timeout(600)
def test_clients_run_on_both_nodes_of_a_local_ray_cluster(tmp_path):
    env = dict(os.environ, RAY_ADDRESS="", RAY_USAGE_STATS_ENABLED="0")
    script = [sys.executable, str(ROOT / "scripts" / "ray_local_cluster.py"), "--nodes", "2", "--cpus-per-node", "1"]
    cluster = subprocess.Popen(script, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        address, cluster_nodes = wait_for_cluster(cluster, 180)
        assert address.startswith("127.0.0.1:")
        sets = [
            f"simulation.ray_address='{address}'",
            f"run.output_dir='{tmp_path}'",
            "run.name='cluster'",
            "federation.num_clients=4",
            "federation.rounds=2",
            "evaluation.attacks=['loss-threshold']",
        ]
        cmd = [str(BIN / "fedlora"), "run", "configs/smoke.toml", *sum((["--set", s] for s in sets), [])]
        run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=480)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        rows = [json.loads(line) for line in (tmp_path / "cluster" / METRICS_FILE).read_text().splitlines()]
        served = [r["ray_nodes"] for r in rows if r.get("ray_nodes")]
        assert len(served) == 2 and all(sorted(s) == ["0", "1", "2", "3"] for s in served)
        used = {node for s in served for node in s.values()}
        assert used == cluster_nodes, f"clients ran on {used}, the cluster has {cluster_nodes}"
    finally:
        stop([cluster])
