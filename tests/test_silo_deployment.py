"""Per-silo data on Flower's deployment engine: a SuperLink and SuperNodes on 127.0.0.1 with TLS and SuperNode
authentication (``fedlora.deploy``), each SuperNode with its own image folder (two of them hand their messages
to a long-lived silo worker, one runs each in its own ClientApp process); the silos audit the global model.
The server side never opens a silo's files (a Python audit hook in the SuperLink's processes records every
path they open). An unregistered SuperNode is refused. Every process started is ended by its id."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from silo_folders import make_silo_folder
from test_deployment import free_port, stop

from fedlora import deploy
from fedlora.outputs import SILOS_FILE, SPLITS_FILE, SUMMARY_FILE

ROOT = Path(__file__).resolve().parent.parent
SILOS = 3
REFUSED = "Failed to activate SuperNode"
WORKERS = [True, True, False]
# sitecustomize for the SuperLink and every process it starts (SuperExec, the ServerApp): a line per process
# ("alive") and one per path opened or listed under the watched folders (the silos' data)
OPEN_HOOK = """
import os, sys
_log, _watched, _busy = os.environ["FEDLORA_OPEN_LOG"], tuple(os.environ["FEDLORA_WATCHED"].split(os.pathsep)), []

def _write(line):
    fd = os.open(_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (line + "\\n").encode())
    finally:
        os.close(fd)

def _hook(event, args):
    if _busy or event not in ("open", "os.listdir", "os.scandir") or not args or args[0] is None:
        return
    if isinstance(args[0], int):
        return
    _busy.append(1)
    try:
        path = os.path.abspath(os.fsdecode(args[0]))
        if path.startswith(_watched):
            _write(f"OPENED {os.getpid()} {path}")
    finally:
        _busy.pop()

_write(f"alive {os.getpid()} {' '.join(sys.argv[:1])}")
sys.addaudithook(_hook)
"""


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} within {timeout:.0f} s")
        time.sleep(0.5)


@pytest.mark.timeout(600)
def test_silos_train_and_audit_over_tls_with_node_authentication(tmp_path):
    creds = deploy.Credentials(tmp_path / "deploy")
    folders = [make_silo_folder(tmp_path / f"silo{k}", k, 10 + k) for k in range(SILOS)]
    port = free_port()
    hook, opened = tmp_path / "hook", tmp_path / "server-opened.log"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(OPEN_HOOK)
    watch = {
        "PYTHONPATH": str(hook),
        "FEDLORA_OPEN_LOG": str(opened),
        "FEDLORA_WATCHED": ":".join(str(f.resolve()) for f in folders),
    }
    # the hook's control: a process that does read a silo's image is recorded
    probe = next(folders[0].glob("*.png"))
    subprocess.run(
        [sys.executable, "-c", f"open({str(probe)!r}, 'rb').read()"], env={**os.environ, **watch}, check=True
    )
    assert "OPENED" in opened.read_text() and str(probe.resolve()) in opened.read_text()
    opened.unlink()
    procs: list[subprocess.Popen] = []
    try:
        procs += deploy.start_local(
            creds,
            folders,
            port=port,
            supernode_ports=[free_port() for _ in range(SILOS)],
            extra={"members": 4, "nonmembers": 4},
            timeout=60,
            workers=WORKERS,
            superlink_env=watch,
        )
        # a key the SuperLink never registered: refused at activation
        stranger = deploy.make_supernode_key(creds, SILOS)
        assert stranger.exists()
        env = {**deploy.flwr_env(creds), "FLWR_HOME": str(creds.flwr_home / "stranger")}
        argv = deploy.supernode_argv(creds, SILOS, f"127.0.0.1:{port}", folders[0], SILOS, free_port())
        intruder = deploy.start(creds, "stranger", argv + ["--max-retries", "0"], env, procs)
        intruder.wait(timeout=60)
        assert intruder.returncode != 0
        assert REFUSED in (creds.logs / "stranger.log").read_text()

        runs = tmp_path / "runs"
        overrides = (
            "data.dataset='silo' federation.num_clients=3 federation.rounds=2 train.method='smp-lora' "
            "evaluation.attacks=['loss-threshold'] evaluation.quality_samples=0"
        )
        run_config = f"config='configs/smoke.toml' output-dir='{runs}' overrides=\"{overrides}\""
        cmd = [str(Path(sys.executable).parent / "flwr"), "run", str(ROOT), deploy.CONNECTION, "--stream"]
        run = deploy.start(
            creds,
            "run",
            [*cmd, "--run-config", run_config],
            {**deploy.flwr_env(creds), "FLWR_HOME": str(creds.flwr_home)},
            procs,
        )
        summary_path = runs / "smoke" / SUMMARY_FILE
        run.wait(timeout=420)
        logs = {p.name: p.read_text()[-2500:] for p in creds.logs.iterdir()}
        assert summary_path.is_file(), json.dumps(logs, indent=1)
    finally:
        stop(procs)
    assert all(p.poll() is not None for p in procs)
    summary = json.loads(summary_path.read_text())
    privacy = summary["privacy"]
    assert summary["dataset"] == "silo" and privacy["global"] == {}
    assert set(privacy["silos"]) == {str(k) for k in range(SILOS)}
    for k in range(SILOS):
        entry = privacy["silos"][str(k)]["loss-threshold"]
        assert 0.0 <= entry["auc"] <= 1.0 and (entry["n_members"], entry["n_nonmembers"]) == (2, 2)
    assert privacy["silo_audit"]["silos_reported"] == list(range(SILOS))
    silos = json.loads((runs / "smoke" / SILOS_FILE).read_text())["clients"]
    assert [silos[str(k)]["images"] for k in range(SILOS)] == [10 + k for k in range(SILOS)]
    assert not (runs / "smoke" / SPLITS_FILE).exists()
    rows = [json.loads(line) for line in (runs / "smoke" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1, 2] and all(len(r["clients"]) == SILOS for r in rows[1:])
    # the server side never opened a silo's file; its ServerApp ran under the hook
    lines = opened.read_text().splitlines()
    assert [line for line in lines if line.startswith("OPENED")] == []
    assert any(line.startswith("alive") and "flwr-serverapp" in line for line in lines), lines[:10]
    # the silos with a worker trained there (one process for every round), the other in its ClientApp processes
    for k, has_worker in enumerate(WORKERS):
        log = creds.logs / f"worker{k}.log"
        assert log.exists() == has_worker
        if has_worker:
            assert log.read_text().count("train: ") == 2 and "evaluate: " in log.read_text()
    # nothing of the silos' files reached the server's run folder
    server_side = "".join(p.read_text(errors="ignore") for p in (runs / "smoke").glob("*.json*"))
    assert "img_0" not in server_side and "handwritten" not in server_side
