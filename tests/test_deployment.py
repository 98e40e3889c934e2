"""End to end on Flower's deployment engine: a SuperLink and two SuperNodes on 127.0.0.1, `flwr run`
of this app (its FAB) with secure aggregation, every process ended by its id afterwards."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent  # flower-superlink starts flwr-serverapp & co. by bare name


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop(procs: list[subprocess.Popen]) -> None:
    """End every process started here and every descendant of theirs (SuperExec, ServerApp, ClientApps), by id."""
    tree: list[psutil.Process] = []
    for p in procs:
        try:
            root = psutil.Process(p.pid)
            tree += [*root.children(recursive=True), root]
        except psutil.NoSuchProcess:
            pass
    for proc in tree:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(tree, timeout=20)
    for proc in alive:
        proc.kill()
    psutil.wait_procs(alive, timeout=10)
    for p in procs:
        p.wait(timeout=10)


@pytest.mark.timeout(900)
def test_secure_aggregation_on_the_deployment_engine(tmp_path):
    home = tmp_path / "flwr"
    home.mkdir()
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "FLWR_HOME": str(home),
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    }
    link = free_port()
    logs = {name: open(tmp_path / f"{name}.log", "w") for name in ("superlink", "sn0", "sn1", "run")}

    def start(name: str, cmd: list[str], **extra: str) -> subprocess.Popen:
        return subprocess.Popen(
            cmd, env={**env, **extra}, stdout=logs[name], stderr=subprocess.STDOUT, start_new_session=True
        )

    procs = [
        start(
            "superlink",
            [str(BIN / "flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port", str(link)]
            + ["--disable-runtime-dependency-installation"],
        )
    ]
    try:
        time.sleep(3)
        for k in range(2):
            sn = ["--insecure", "--superlink", f"127.0.0.1:{link}", "--port", str(free_port())]
            sn += ["--node-config", f"partition-id={k} num-partitions=2"]
            procs.append(start(f"sn{k}", [str(BIN / "flower-supernode"), *sn], FLWR_HOME=str(home / f"sn{k}")))
        subprocess.run([str(BIN / "flwr"), "config", "list"], env=env, capture_output=True, timeout=60)
        with open(home / "config.toml", "a") as f:
            f.write(f'\n[superlink.localdep]\naddress = "127.0.0.1:{link}"\ninsecure = true\n')
        runs = tmp_path / "runs"
        overrides = (
            f'run.output_dir="{runs}" federation.rounds=1 federation.secure_aggregation=true '
            'evaluation.attacks=["loss-threshold"] evaluation.quality_samples=0'
        )
        run_config = f"config='configs/smoke.toml' overrides='{overrides}'"
        cmd = [str(BIN / "flwr"), "run", str(ROOT), "localdep", "--stream", "--run-config", run_config]
        run = start("run", cmd)
        procs.append(run)
        run.wait(timeout=780)
        summary_path = runs / "smoke" / "summary.json"
        log = (tmp_path / "run.log").read_text()
        assert summary_path.is_file(), log[-3000:]
    finally:
        stop(procs)
        for f in logs.values():
            f.close()
    summary = json.loads(summary_path.read_text())
    assert summary["secure_aggregation"]["enabled"] and summary["privacy"]["clients"] == {}
    rows = [json.loads(line) for line in (runs / "smoke" / "metrics.jsonl").read_text().splitlines()]
    assert rows[1]["sampled"] == [0, 1] and rows[1]["secagg_dropped"] == [] and len(rows[1]["clients"]) == 2
    assert all(p.poll() is not None for p in procs)
    assert not [
        q
        for q in psutil.process_iter(["environ"])
        if (q.info["environ"] or {}).get("FLWR_HOME", "").startswith(str(home))
    ]
