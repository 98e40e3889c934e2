"""Faults on Flower's real deployment engine (issue 15): a SuperNode killed mid-run and restarted, and a client
that uploads NaN, with TLS, SuperNode authentication, a long-lived worker and a ``state-dir`` per silo.

SuperNode 1 is ended (SIGTERM to its process group) once round 1 is complete; the run goes on with silo 0.
Restarted after round 2 with the same key, it rejoins under its node id and continues from its state on disk:
its round count and its DP-SGD accountant carry on, so its ε keeps accumulating (checked against silo 0,
which trained every round with the same split sizes). Silo 0 uploads NaN in round 4: the server rejects and
counts it. Every process started is ended by its id. (That a restarted SuperNode's proxy attacker carries on
from its state-dir is pinned in-process by tests/test_silo.py; a second SMP-LoRA run here doubled this test.)
"""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from silo_folders import make_silo_folder
from test_deployment import free_port, stop

from fedlora import checkpoint, deploy
from fedlora.protocol import DP_STATE, NODE_STATE_DIR

ROOT = Path(__file__).resolve().parent.parent
ROUNDS = 4
OVERRIDES = (
    f"data.dataset='silo' federation.num_clients=2 federation.rounds={ROUNDS} federation.round_timeout_s=180 "
    "train.method='lora' privacy.dp='dp-lora' simulation.nan_clients=['0@4'] "
    "evaluation.attacks=['loss-threshold'] evaluation.quality_samples=0"
)


def last_complete(run_dir: Path) -> int:
    status = checkpoint.read_status(run_dir) if run_dir.exists() else None
    return int((status or {}).get("last_complete_round") or 0)


def wait_for(predicate, timeout: float, what: str, run: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if run.poll() is not None:
            raise RuntimeError(f"the run ended (exit {run.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} within {timeout:.0f} s")
        time.sleep(0.3)


def supernode_of(procs: list[subprocess.Popen], creds: deploy.Credentials, k: int) -> subprocess.Popen:
    return [p for p in procs if str(creds.supernode_key(k)) in p.args and p.poll() is None][-1]


def run_with_a_restart(creds, procs, port, sn_ports, folders, extra, runs: Path, overrides: str) -> dict[int, dict]:
    """Submit a run; end SuperNode 1 once round 1 is complete, start it again once round 2 is; its rows."""
    run_dir = runs / "smoke"
    run_config = f"config='configs/smoke.toml' output-dir='{runs}' overrides=\"{overrides}\""
    cmd = [str(Path(sys.executable).parent / "flwr"), "run", str(ROOT), deploy.CONNECTION, "--stream"]
    env = {**deploy.flwr_env(creds), "FLWR_HOME": str(creds.flwr_home)}
    run = deploy.start(creds, f"run-{runs.name}", [*cmd, "--run-config", run_config], env, procs)
    wait_for(lambda: last_complete(run_dir) >= 1, 420, "round 1", run)
    deploy.stop_processes([supernode_of(procs, creds, 1)])  # SIGTERM to SuperNode 1 and its SuperExec / ClientApp
    wait_for(lambda: last_complete(run_dir) >= 2, 300, "round 2 without SuperNode 1", run)
    node_extra = {**extra, "worker": str(creds.worker_socket(1))}
    argv = deploy.supernode_argv(creds, 1, f"127.0.0.1:{port}", folders[1], 2, sn_ports[1], node_extra)
    sn_env = {**deploy.flwr_env(creds), "FLWR_HOME": str(creds.flwr_home / "sn1")}
    deploy.start(creds, f"sn1-restarted-{runs.name}", argv, sn_env, procs)
    run.wait(timeout=420)
    assert (run_dir / "summary.json").is_file()
    return {r["round"]: r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}


def went_on_without_silo_1_then_took_it_back(rows: dict[int, dict], rounds: int) -> list[int]:
    """Round 2 ran with silo 0 alone (silo 1's reply failed, or it was offline); the rounds silo 1 came back in."""
    assert sorted(rows) == list(range(rounds + 1))
    assert sorted(rows[2]["clients"]) == ["0"]
    assert rows[2].get("failures") or 1 in (rows[2].get("left") or []) or 1 not in (rows[2].get("online") or [])
    back = [r for r in range(3, rounds + 1) if "1" in rows[r]["clients"]]
    assert back, [rows[r].get("online") for r in range(3, rounds + 1)]
    return back


@pytest.mark.timeout(900)
def test_a_killed_supernode_rejoins_with_its_state_and_a_nan_upload_is_rejected(tmp_path):
    creds = deploy.Credentials(tmp_path / "deploy")
    folders = [make_silo_folder(tmp_path / f"silo{k}", k, 10) for k in range(2)]
    state = tmp_path / "state"
    extra = {"members": 4, "nonmembers": 4, NODE_STATE_DIR: str(state)}
    port, sn_ports = free_port(), [free_port(), free_port()]
    procs: list[subprocess.Popen] = []
    try:
        procs += deploy.start_local(creds, folders, port=port, supernode_ports=sn_ports, extra=extra, workers=True)
        rows = run_with_a_restart(creds, procs, port, sn_ports, folders, extra, tmp_path / "dp", OVERRIDES)
        (run_state,) = state.glob("run-*")
        saved = {k: checkpoint.load_client(run_state, k, ROUNDS + 1) for k in (0, 1)}
    except BaseException:
        print(json.dumps({p.name: p.read_text()[-2000:] for p in creds.logs.iterdir()}, indent=1))
        raise
    finally:
        stop(procs)
    assert all(p.poll() is not None for p in procs)

    back = went_on_without_silo_1_then_took_it_back(rows, ROUNDS)
    # silo 0's NaN upload in round 4 was rejected and counted
    assert [line.split(":")[0] for line in rows[ROUNDS]["rejected"]] == ["partition 0"]
    assert "0" not in rows[ROUNDS]["clients"] and "1" in rows[ROUNDS]["clients"]
    # silo 1 continued: its count and ε carry on from before the restart (as silo 0's do after as many trained
    # rounds: both have 4 members)
    one = rows[back[-1]]["clients"]["1"]
    assert one["rounds_trained"] >= 2
    eps_of_0 = {rows[r]["clients"]["0"]["rounds_trained"]: rows[r]["clients"]["0"]["dp_epsilon"] for r in (1, 2, 3)}
    assert one["dp_epsilon"] == pytest.approx(eps_of_0[one["rounds_trained"]])
    assert one["dp_epsilon"] > rows[1]["clients"]["1"]["dp_epsilon"]
    counts = {k: int(saved[k]["counts"]["rounds-trained"]) for k in (0, 1)}
    assert counts[0] == ROUNDS and counts[1] == one["rounds_trained"]
    assert all(DP_STATE in saved[k]["arrays"] for k in (0, 1))
    # one worker served silo 1 before and after its SuperNode's restart
    assert (creds.logs / "worker1.log").read_text().count("train: ") >= 1 + len(back)
