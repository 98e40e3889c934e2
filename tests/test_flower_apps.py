"""Handler tests: the ClientApp's functions and the strategy, driven with hand-made Messages."""

import time

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.app.metadata import Metadata

from clients import app as client_module
from clients import handlers
from fedlora import runtime as runtime_module
from fedlora.aggregation import fedavg
from fedlora.config import load_config
from fedlora.protocol import CONFIG_KEY, NUM_EXAMPLES, PARTITION_ID, WARM
from fedlora.rounds import RoundLog
from fedlora.rules import build_rule
from fedlora.runtime import get_runtime
from server.strategy import LoraStrategy


def message(content, message_type, src=0, dst=7, mid="m"):
    meta = Metadata(
        run_id=1,
        message_id=mid,
        src_node_id=src,
        dst_node_id=dst,
        reply_to_message_id="",
        group_id="1",
        created_at=time.time(),
        ttl=600.0,
        message_type=message_type,
    )
    return Message(content, metadata=meta)


def context(pid):
    return Context(
        run_id=1, node_id=7, node_config={PARTITION_ID: pid, "num-partitions": 2}, state=RecordDict(), run_config={}
    )


@pytest.fixture
def cfg(tiny_base):
    return load_config("configs/smoke.toml", [f"model.base_model='{tiny_base}'", "data.dataset='digits'"])


def test_train_handler_returns_lora_and_keeps_state_across_rounds(cfg):
    initial = get_runtime(cfg).get_lora()
    ctx = context(1)
    for rnd in (1, 2):
        msg = message(
            RecordDict(
                {
                    "arrays": handlers.record_of(initial),
                    "config": ConfigRecord({"server-round": rnd, CONFIG_KEY: cfg.to_toml()}),
                }
            ),
            "train",
        )
        reply = client_module.train(msg, ctx)
        metrics = reply.content["metrics"]
        assert metrics[NUM_EXAMPLES] == cfg.data.members_per_client
        assert metrics[PARTITION_ID] == 1
        assert metrics["rounds_trained"] == rnd
        assert set(reply.content["arrays"].keys()) == set(initial)
    assert ctx.state["client-state"]["rounds-trained"] == 2


def test_query_handler_reports_partition_and_requires_it():
    reply = client_module.query(message(RecordDict({"config": ConfigRecord({})}), "query"), context(3))
    assert reply.content["metrics"][PARTITION_ID] == 3
    bare = Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})
    with pytest.raises(KeyError, match="--node-config"):
        handlers.partition_id(bare)


def test_a_warm_query_loads_the_model_and_splits_a_plain_one_loads_nothing(cfg, monkeypatch):
    monkeypatch.setattr(runtime_module, "_RUNTIMES", {})
    monkeypatch.setattr(runtime_module, "_SPLITS", {})
    plain = ConfigRecord({CONFIG_KEY: cfg.to_toml()})
    client_module.query(message(RecordDict({"config": plain}), "query"), context(1))
    assert runtime_module._RUNTIMES == {} and runtime_module._SPLITS == {}
    warm = ConfigRecord({CONFIG_KEY: cfg.to_toml(), WARM: True})
    reply = client_module.query(message(RecordDict({"config": warm}), "query"), context(1))
    assert reply.content["metrics"][PARTITION_ID] == 1
    assert len(runtime_module._RUNTIMES) == 1 and len(runtime_module._SPLITS) == 1
    assert handlers.config_of(cfg.to_toml()) is handlers.config_of(cfg.to_toml())  # parsed once per process


def fake_reply(pid, state, n):
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(v) for k, v in state.items()}),
            "metrics": MetricRecord({NUM_EXAMPLES: n, PARTITION_ID: pid, "train_loss": float(pid)}),
        }
    )
    return message(content, "train", src=100 + pid, dst=0, mid=f"r{pid}")


def test_strategy_aggregates_in_partition_order_with_the_configured_rule():
    rng = np.random.default_rng(0)
    states = [
        {
            "a.lora_A.weight": rng.normal(size=(2, 3)).astype(np.float32),
            "a.lora_B.weight": rng.normal(size=(3, 2)).astype(np.float32),
        }
        for _ in range(3)
    ]
    rule = build_rule(load_config(None, ["federation.num_clients=3"])).start(states[0])
    strategy = LoraStrategy(
        rule=rule, log=RoundLog(), partition_of={100: 0, 101: 1, 102: 2}, fraction=1.0, seed=0, config_text=""
    )
    replies = [fake_reply(2, states[2], 30), fake_reply(0, states[0], 10), fake_reply(1, states[1], 20)]
    arrays, metrics = strategy.aggregate_train(1, replies)
    expected = fedavg(states, [10, 20, 30])
    for k, v in expected.items():
        np.testing.assert_allclose(arrays[k].numpy(), v, rtol=1e-6)
    assert metrics["train_loss"] == pytest.approx((0 * 10 + 1 * 20 + 2 * 30) / 60)
    info = strategy.log[1]
    assert list(info.clients) == ["0", "1", "2"]
    serialized = sum(len(Array(v).data) for v in states[0].values())  # what goes on the wire
    assert info.bytes_up_per_client == serialized >= 2 * 6 * 4


def test_client_sampling_is_seeded_and_respects_the_fraction():
    partition_of = {1000 + k: k for k in range(10)}
    rule = build_rule(load_config(None, ["federation.num_clients=10"])).start(
        {"a.lora_A.weight": np.ones((1, 2)), "a.lora_B.weight": np.zeros((2, 1))}
    )
    a = LoraStrategy(rule=rule, log=RoundLog(), partition_of=partition_of, fraction=0.3, seed=4, config_text="")
    b = LoraStrategy(rule=rule, log=RoundLog(), partition_of=partition_of, fraction=0.3, seed=4, config_text="")
    assert a.sample_partitions(2) == b.sample_partitions(2)
    assert len(a.sample_partitions(2)) == 3
    assert len({tuple(a.sample_partitions(r)) for r in range(1, 8)}) > 1


@pytest.mark.parametrize(
    "dp, extra",
    [
        ("dp-fedavg", []),
        ("dp-lora", ["dp_epsilon", "dp_sample_rate", "dp_mean_batch"]),
        ("implicit-dp", []),
    ],
)
def test_a_dp_clients_reply_carries_nothing_member_dependent(cfg, dp, extra):
    """Under every DP mode the reply's metrics are the protocol's, timing and the mode's accounting: no loss,
    no proxy attacker's accuracy (nothing the mechanism's ε does not cover)."""
    overrides = {
        "dp-fedavg": {"train.method": "smp-lora"},  # the proxy attacker's metrics must not leak either
        "dp-lora": {},
        "implicit-dp": {"federation.aggregation": "ffa", "model.lora_a_init": "gaussian"},
    }[dp]
    dp_cfg = cfg.replace(**{"privacy.dp": dp, **overrides})
    initial = get_runtime(dp_cfg).get_lora()
    config = ConfigRecord({"server-round": 1, CONFIG_KEY: dp_cfg.to_toml()})
    reply = client_module.train(
        message(RecordDict({"arrays": handlers.record_of(initial), "config": config}), "train"), context(0)
    )
    keys = set(reply.content["metrics"].keys())
    assert keys == {NUM_EXAMPLES, PARTITION_ID, "rounds_trained", "train_s", "setup_s", "process_s", "steps", *extra}
    plain = client_module.train(
        message(
            RecordDict(
                {
                    "arrays": handlers.record_of(get_runtime(cfg).get_lora()),
                    "config": ConfigRecord({"server-round": 1, CONFIG_KEY: cfg.to_toml()}),
                }
            ),
            "train",
        ),
        context(0),
    )
    assert "train_loss" in plain.content["metrics"]  # without DP the losses are reported as before
