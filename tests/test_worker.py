"""The silo worker (``clients.worker``): the ClientApp's bodies run in a long-lived process give the same
reply and the same state as in the ClientApp's own process; failures name the socket and the reason."""

import json
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, RecordDict
from test_flower_apps import context, message

from clients import app as client_module
from clients import handlers, worker
from fedlora.config import load_config
from fedlora.protocol import CONFIG_KEY, NODE_WORKER, PARTITION_ID, PROCESS_AGE
from fedlora.runtime import get_runtime

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def socket_path():
    with tempfile.TemporaryDirectory(prefix="fw-", dir="/tmp") as d:  # a Unix socket's path must be short
        yield Path(d) / "worker.sock"


def serving(path, bodies=None, requests=1):
    thread = threading.Thread(target=worker.serve, args=(path, bodies, requests, lambda _: None), daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not path.exists():
        assert time.monotonic() < deadline, "the worker did not listen within 30 s"
        time.sleep(0.05)
    return thread


def with_worker(ctx, path):
    return Context(ctx.run_id, ctx.node_id, {**ctx.node_config, NODE_WORKER: str(path)}, ctx.state, ctx.run_config)


def test_a_round_on_the_worker_equals_a_round_in_the_clientapp(tiny_base, socket_path):
    cfg = load_config("configs/smoke.toml", [f"model.base_model='{tiny_base}'", "data.dataset='digits'"])
    initial = get_runtime(cfg).get_lora()
    here, there = context(1), with_worker(context(1), socket_path)
    thread = serving(socket_path, requests=2)
    for rnd in (1, 2):  # round 2 uses the state round 1 left (the proxy attacker, the round count)
        content = RecordDict(
            {
                "arrays": handlers.record_of(initial),
                "config": ConfigRecord({"server-round": rnd, CONFIG_KEY: cfg.to_toml()}),
            }
        )
        direct = client_module.train(message(content, "train"), here)
        remote = client_module.train(message(content, "train"), there)
        a, b = handlers.arrays_of(direct.content["arrays"]), handlers.arrays_of(remote.content["arrays"])
        assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)
        m, n = dict(direct.content["metrics"]), dict(remote.content["metrics"])
        assert set(m) == set(n) and PROCESS_AGE in n
        assert m["train_loss"] == n["train_loss"] and n["rounds_trained"] == rnd
    thread.join(timeout=30)
    assert not thread.is_alive() and not socket_path.exists()  # served its 2 requests, removed its socket
    assert set(here.state.keys()) == set(there.state.keys())
    assert there.state["client-state"]["rounds-trained"] == 2


def test_a_body_that_raises_on_the_worker_fails_the_clientapp_with_its_reason(socket_path):
    def broken(content, ctx):
        raise ValueError("bad data-path '/nowhere'")

    serving(socket_path, {"train": broken})
    with pytest.raises(worker.WorkerError, match=r"failed in 'train': ValueError: bad data-path '/nowhere'"):
        worker.call(socket_path, "train", RecordDict(), context(0))


def test_no_worker_at_the_socket_names_the_key_and_how_to_start_one(socket_path):
    with pytest.raises(worker.WorkerError, match=rf"node config '{NODE_WORKER}' = '{socket_path}': no silo worker"):
        client_module.query(
            message(RecordDict({"config": ConfigRecord({})}), "query"), with_worker(context(0), socket_path)
        )


@pytest.mark.parametrize("path, match", [("relative.sock", "absolute path"), ("/tmp/" + "x" * 120, "at most 100")])
def test_a_bad_socket_path_is_refused_by_name(path, match):
    with pytest.raises(ValueError, match=rf"'{NODE_WORKER}'.*{match}"):
        worker.check_socket_path(path)


def test_a_request_of_another_protocol_version_is_refused(socket_path):
    serving(socket_path, {"query": handlers.query})
    header = json.dumps({"protocol": worker.PROTOCOL + 1, "body": "query"}).encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(str(socket_path))
        with conn.makefile("rwb") as stream:
            worker._write(stream, header, worker._context_bytes(context(0)), worker._content_bytes(RecordDict()))
            reply = json.loads(worker._read(stream))
    assert not reply["ok"] and "install the same fedlora" in reply["error"]


@pytest.mark.timeout(120)
def test_the_worker_command_serves_until_sigterm_and_removes_its_socket(socket_path):
    proc = subprocess.Popen([sys.executable, "-m", "clients.worker", str(socket_path)], cwd=ROOT)
    try:
        deadline = time.monotonic() + 90
        while not socket_path.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the worker did not start listening"
            time.sleep(0.1)
        reply = worker.call(socket_path, "query", RecordDict({"config": ConfigRecord({})}), context(3))
        assert reply["metrics"][PARTITION_ID] == 3
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert not socket_path.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_the_worker_warms_up_with_the_request_before_it_replies(socket_path):
    seen = []
    thread = threading.Thread(
        target=worker.serve,
        args=(socket_path, {"query": handlers.query}, 1, lambda _: None, {"query": lambda c, ctx: seen.append(ctx)}),
        daemon=True,
    )
    thread.start()
    while not socket_path.exists():
        time.sleep(0.05)
    reply = worker.call(socket_path, "query", RecordDict({"config": ConfigRecord({})}), context(5))
    warmed_when_answered = [c.node_config[PARTITION_ID] for c in seen]  # read before the thread is joined
    thread.join(timeout=30)
    assert reply["metrics"][PARTITION_ID] == 5 and warmed_when_answered == [5]


def test_warming_a_silo_encodes_its_members_and_attack_sets_before_round_1(tiny_base, tmp_path, monkeypatch):
    from silo_folders import make_silo_folder

    from fedlora.protocol import DATA_PATH
    from fedlora.runtime import ModelRuntime

    folder = make_silo_folder(tmp_path / "silo", 0, 10)
    cfg = load_config(
        "configs/smoke.toml",
        [
            f"model.base_model='{tiny_base}'",
            "data.dataset='silo'",
            "federation.num_clients=1",
            "train.method='smp-lora'",
        ],
    )
    node = {PARTITION_ID: 0, "num-partitions": 1, DATA_PATH: str(folder), "members": 4, "nonmembers": 4}
    ctx = Context(1, 7, node, RecordDict(), {})
    encoded = []
    real = ModelRuntime.encode
    monkeypatch.setattr(ModelRuntime, "encode", lambda self, ds, ids: encoded.append(tuple(ids)) or real(self, ds, ids))
    handlers.warm(RecordDict({"config": ConfigRecord({CONFIG_KEY: cfg.to_toml()})}), ctx)
    split = handlers.silo_of(cfg, ctx).splits.clients[0]
    assert (
        tuple(split.members) in encoded
        and tuple(split.member_aux) in encoded
        and tuple(split.nonmember_test) in encoded
    )
    encoded.clear()
    handlers.warm(RecordDict({"config": ConfigRecord({})}), ctx)  # no config (a simulation's query): nothing
    assert encoded == []
