"""Interrupt and resume: checkpoints that rebuild every object exactly, a Ctrl-C that ends cleanly,
a resumed run equal to an uninterrupted one tensor by tensor, and a private Ray on 127.0.0.1 only."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from safetensors.numpy import load_file

from fedlora import checkpoint
from fedlora.cli import main
from fedlora.models.lora import ModelView
from fedlora.reports import Timing
from fedlora.rounds import RoundLog

ROOT = Path(__file__).resolve().parent.parent
RUN_TIMEOUT_S = 600
PROCESS_EXIT_S = 60


def test_checkpoint_trees_round_trip_with_their_types(tmp_path):
    log = RoundLog()
    log[1].sampled, log[1].clients, log[1].failures = [0, 2], {"0": {"train_loss": 0.5}}, ["partition 1: boom"]
    tree = {
        "rule": {
            "global_lora": {"a.lora_A.weight": np.arange(6, dtype=np.float32).reshape(2, 3)},
            "views": {3: ModelView(lora={"x": np.ones(2, np.float32)})},
            "delivered": {0: 2, 1: 0},
            "pairs": [("a", "b")],
            "_payloads": {(4, "x"): None},
        },
        "log": log,
        "timings": Timing(train_s=1.5, eval_s=2.0),
        "scalar": np.float32(0.25),
    }
    checkpoint.save_tree(tmp_path, "t", tree)
    back = checkpoint.load_tree(tmp_path, "t")
    np.testing.assert_array_equal(
        back["rule"]["global_lora"]["a.lora_A.weight"], tree["rule"]["global_lora"]["a.lora_A.weight"]
    )
    assert back["rule"]["global_lora"]["a.lora_A.weight"].dtype == np.float32
    assert isinstance(back["rule"]["views"][3], ModelView)
    assert back["rule"]["delivered"] == {0: 2, 1: 0} and back["rule"]["pairs"] == [("a", "b")]
    assert (4, "x") in back["rule"]["_payloads"]
    assert back["log"].rounds[1].sampled == [0, 2] and back["log"].rounds[1].failures == ["partition 1: boom"]
    assert back["timings"].train_s == 1.5 and back["scalar"] == 0.25


def test_a_checkpoint_refuses_objects_it_could_not_rebuild(tmp_path):
    with pytest.raises(TypeError, match="cannot checkpoint a set"):
        checkpoint.save_tree(tmp_path, "t", {"x": {1, 2}})


def test_a_damaged_checkpoint_is_named(tmp_path):
    checkpoint.save_tree(tmp_path, checkpoint.SERVER_STEM, {"round": 1, "x": np.zeros(3)})
    tensors = tmp_path / f"{checkpoint.SERVER_STEM}.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:20])
    with pytest.raises(checkpoint.CheckpointError, match="is damaged"):
        checkpoint.load_tree(tmp_path, checkpoint.SERVER_STEM)


def test_rng_states_restore_the_same_draws():
    import random

    import torch

    state = checkpoint.rng_state()
    first = (np.random.normal(size=3), random.random(), torch.rand(2))
    checkpoint.set_rng_state(state)
    again = (np.random.normal(size=3), random.random(), torch.rand(2))
    np.testing.assert_array_equal(first[0], again[0])
    assert first[1] == again[1] and torch.equal(first[2], again[2])


def test_a_client_keeps_its_last_two_states_and_resumes_from_the_one_before_the_round(tmp_path):
    for r in (1, 3, 4):
        checkpoint.save_client(tmp_path, 5, r, {"arrays": {"k": {"w": np.full(2, r, np.float32)}}, "counts": {}})
    assert sorted(p.name for p in (tmp_path / "5").glob("*.json")) == ["round_3.json", "round_4.json"]
    assert checkpoint.load_client(tmp_path, 5, 4)["arrays"]["k"]["w"][0] == 3  # round 4 is redone
    assert checkpoint.load_client(tmp_path, 5, 3) is None  # its round-1 state is gone
    assert checkpoint.load_client(tmp_path, 6, 4) is None


def test_status_says_why_a_folder_holds_no_finished_run(tmp_path):
    checkpoint.write_status(tmp_path, checkpoint.RUNNING)
    assert "still running or was killed, no round completed" in checkpoint.incomplete_reason(tmp_path)
    checkpoint.write_status(tmp_path, checkpoint.INTERRUPTED, last_round=2)
    reason = checkpoint.incomplete_reason(tmp_path)
    assert "interrupted" in reason and "round is 2" in reason and "--resume" in reason
    checkpoint.finish(tmp_path)
    assert checkpoint.incomplete_reason(tmp_path) is None


def test_resume_needs_a_checkpoint_and_no_overrides(tmp_path, capsys):
    assert main(["run", "--resume", str(tmp_path)]) == 2
    assert "config.toml is missing" in capsys.readouterr().err
    (tmp_path / "config.toml").write_text((ROOT / "configs" / "smoke.toml").read_text())
    assert main(["run", "--resume", str(tmp_path)]) == 2
    assert "no checkpoint to resume from" in capsys.readouterr().err
    assert main(["run", "--resume", str(tmp_path), "--set", "federation.rounds=2"]) == 2
    assert main(["run", "configs/smoke.toml", "--resume", str(tmp_path)]) == 2


# ---- end to end: `fedlora run` as a user starts it -------------------------------------------


def fedlora(*args: str, out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FLWR_TELEMETRY_ENABLED": "0", "RAY_ADDRESS": ""}
    log = open(out, "w")  # noqa: SIM115  # closed with the process
    return subprocess.Popen(
        [sys.executable, "-m", "fedlora.cli", *args], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
    )


def smoke_args(output_dir: Path, name: str) -> list[str]:
    sets = [f"run.output_dir='{output_dir}'", f"run.name='{name}'", "federation.rounds=3"]
    return ["run", "configs/smoke.toml", *[a for s in sets for a in ("--set", s)]]


def descendants(proc: subprocess.Popen) -> list[psutil.Process]:
    try:
        return psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def listening_addresses(procs: list[psutil.Process]) -> set[tuple[str, str]]:
    pids = {p.pid: p for p in procs}
    seen = set()
    for conn in psutil.net_connections(kind="inet"):
        if conn.status == psutil.CONN_LISTEN and conn.pid in pids:
            try:
                name = pids[conn.pid].name()
            except psutil.NoSuchProcess:
                continue
            seen.add((name, conn.laddr.ip))
    return seen


def is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    mapped = getattr(addr, "ipv4_mapped", None)
    return (mapped or addr).is_loopback


def wait_for_round(metrics: Path, server_round: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.exists() and any(
            json.loads(line)["round"] >= server_round for line in metrics.read_text().splitlines()
        ):
            return
        time.sleep(0.2)
    raise AssertionError(f"round {server_round} never finished (exit code {proc.poll()})")


def end(proc: subprocess.Popen, started: list[psutil.Process]) -> None:
    """Kill what a failed test left running, by process id."""
    for p in [*started, *descendants(proc)]:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    if proc.poll() is None:
        proc.kill()
        proc.wait(30)


def test_sigint_in_round_2_then_resume_equals_the_uninterrupted_run_and_ray_listens_on_localhost(tmp_path):
    full = fedlora(*smoke_args(tmp_path, "full"), out=tmp_path / "full.log")
    seen_procs: list[psutil.Process] = []
    try:
        wait_for_round(tmp_path / "full" / "metrics.jsonl", 1, full)
        seen_procs = descendants(full)
        addresses = listening_addresses(seen_procs)
        assert {name for name, _ in addresses} >= {"gcs_server", "raylet"}, addresses
        assert all(is_loopback(ip) for _, ip in addresses), f"listening beyond 127.0.0.1: {addresses}"
        assert full.wait(RUN_TIMEOUT_S) == 0, (tmp_path / "full.log").read_text()[-3000:]
    finally:
        end(full, seen_procs)

    cut = fedlora(*smoke_args(tmp_path, "cut"), out=tmp_path / "cut.log")
    started: list[psutil.Process] = []
    try:
        wait_for_round(tmp_path / "cut" / "metrics.jsonl", 1, cut)  # round 2 is in flight now
        started = descendants(cut)
        cut.send_signal(signal.SIGINT)
        assert cut.wait(RUN_TIMEOUT_S) == 130, (tmp_path / "cut.log").read_text()[-3000:]
        # Ray's workers exit once their raylet is gone: give them a bounded while on a loaded machine
        _, alive = psutil.wait_procs(started, timeout=PROCESS_EXIT_S)
        alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert not alive, f"left running {PROCESS_EXIT_S} s after Ctrl-C: {[p.name() for p in alive]}"
    finally:
        end(cut, started)
    status = json.loads((tmp_path / "cut" / "status.json").read_text())
    assert status["state"] == "interrupted" and status["last_complete_round"] in (1, 2)
    assert not (tmp_path / "cut" / "summary.json").exists()
    assert "fedlora run --resume" in (tmp_path / "cut.log").read_text()

    resumed = fedlora("run", "--resume", str(tmp_path / "cut"), out=tmp_path / "resume.log")
    try:
        assert resumed.wait(RUN_TIMEOUT_S) == 0, (tmp_path / "resume.log").read_text()[-3000:]
    finally:
        end(resumed, [])
    for name in ["adapter/pytorch_lora_weights.safetensors", "views/global.safetensors", "views/client_0.safetensors"]:
        a, b = load_file(tmp_path / "full" / name), load_file(tmp_path / "cut" / name)
        assert sorted(a) == sorted(b)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"{name}:{key}")
    rows = [json.loads(line) for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1, 2, 3]
    assert json.loads((tmp_path / "cut" / "status.json").read_text())["state"] == "complete"
    assert not (tmp_path / "cut" / "checkpoint").exists()


def test_evaluate_and_compare_call_an_unfinished_run_incomplete(tmp_path, capsys):
    run = tmp_path / "cut"
    run.mkdir()
    (run / "config.toml").write_text((ROOT / "configs" / "smoke.toml").read_text())
    checkpoint.write_status(run, checkpoint.INTERRUPTED, last_round=2)
    assert main(["evaluate", str(run)]) == 2
    err = capsys.readouterr().err
    assert "incomplete run: it was interrupted" in err and f"fedlora run --resume {run}" in err
    assert main(["compare", str(run), "--out", str(tmp_path / "cmp")]) == 2
    assert "incomplete run" in capsys.readouterr().err
