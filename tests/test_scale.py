"""Flat memory in the number of clients: client state on disk, bounded caches and audit views,
a fixed number of clients per round, and a dataset large enough for a thousand clients."""

from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, RecordDict

from clients import app as client_module
from clients import handlers
from fedlora.audit_views import AuditViews, audited_clients
from fedlora.byte_cache import ByteLRU
from fedlora.config import ConfigError, load_config, sampled_per_round
from fedlora.data import load_dataset, make_splits
from fedlora.data.shapes import NUM_IMAGES, load_shapes
from fedlora.models.lora import ModelView
from fedlora.protocol import CLIENT_STATE, CONFIG_KEY, OBJECTIVE_STATE, PARTITION_ID, STATE_DIR
from fedlora.rules import build_rule
from fedlora.runtime import get_runtime
from tests.test_flower_apps import message

# ---- client state on disk --------------------------------------------------------------------


def fresh_context(pid):
    return Context(run_id=1, node_id=7, node_config={PARTITION_ID: pid}, state=RecordDict(), run_config={})


def train_round(cfg, ctx, rnd, payload, state_dir=None):
    config = {"server-round": rnd, CONFIG_KEY: cfg.to_toml()}
    if state_dir is not None:
        config[STATE_DIR] = str(state_dir)
    msg = message(RecordDict({"arrays": handlers.record_of(payload), "config": ConfigRecord(config)}), "train")
    reply = client_module.train(msg, ctx)
    return handlers.arrays_of(reply.content["arrays"]), dict(reply.content["metrics"])


def test_simulated_client_state_lives_on_disk_and_gives_the_in_memory_numbers(tiny_base, tmp_path):
    cfg = load_config(
        "configs/smoke.toml", [f"model.base_model='{tiny_base}'", "data.dataset='digits'", "train.method='smp-lora'"]
    )
    initial = get_runtime(cfg).get_lora()
    in_memory, on_disk = fresh_context(1), fresh_context(1)
    for rnd in (1, 2):
        want, want_metrics = train_round(cfg, in_memory, rnd, initial)
        got, got_metrics = train_round(cfg, on_disk, rnd, initial, state_dir=tmp_path)
        # nothing of the client's stays in Flower's context between rounds; its file holds it
        assert OBJECTIVE_STATE not in on_disk.state and CLIENT_STATE not in on_disk.state
        assert (tmp_path / "1" / f"round_{rnd}.safetensors").exists()
        timing = {k for k in want_metrics if k.endswith("_s")}
        # the attacker's update count continues across rounds; every metric but the timings agrees
        assert {k: v for k, v in got_metrics.items() if k not in timing} == {
            k: v for k, v in want_metrics.items() if k not in timing
        }
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    assert OBJECTIVE_STATE in in_memory.state  # a deployment client keeps it in memory
    assert got_metrics["rounds_trained"] == 2


# ---- bounded worker cache --------------------------------------------------------------------


def test_byte_lru_drops_the_least_recently_used_and_never_exceeds_its_bound():
    made = []

    def make(n):
        def build():
            made.append(n)
            return torch.zeros(n, dtype=torch.uint8)

        return build

    cache = ByteLRU(10, lambda t: t.nbytes)
    cache.get_or_make("a", make(4))
    cache.get_or_make("b", make(4))
    cache.get_or_make("a", make(4))  # hit: "a" is now the most recent
    cache.get_or_make("c", make(4))  # 12 bytes > 10: "b" goes
    assert "a" in cache and "c" in cache and "b" not in cache and cache.bytes == 8
    assert made == [4, 4, 4]
    assert len(cache.get_or_make("big", make(11))) == 11 and "big" not in cache  # larger than the bound
    assert ByteLRU(0, lambda t: t.nbytes).get_or_make("x", make(1)).numel() == 1


def test_the_runtime_cache_is_bounded_by_latent_cache_mb(tiny_base):
    cfg = load_config(
        "configs/smoke.toml",
        [f"model.base_model='{tiny_base}'", "data.dataset='digits'", "simulation.latent_cache_mb=0.001"],
    )
    runtime = get_runtime(cfg)
    dataset = load_dataset(cfg.data)
    first = runtime.encode(dataset, dataset.ids[:4])
    assert runtime._encoded.bytes <= 0.001 * 2**20 and first.nbytes > 0.001 * 2**20
    again = runtime.encode(dataset, dataset.ids[:4])  # encoded again: the same values
    torch.testing.assert_close(first.latents, again.latents, rtol=0, atol=0)


# ---- bounded audit views ---------------------------------------------------------------------


def test_the_audit_keeps_every_client_up_to_its_bound_then_a_seeded_sample():
    small = load_config(None, ["federation.num_clients=8", "evaluation.audit_clients=8"])
    assert audited_clients(small) == frozenset(range(8))
    big = load_config(None, ["federation.num_clients=1000", "evaluation.audit_clients=16"])
    sample = audited_clients(big)
    assert len(sample) == 16 and sample == audited_clients(big) and max(sample) < 1000
    assert sample != audited_clients(big.replace(**{"run.seed": 1}))


def test_a_rule_keeps_views_of_the_audited_clients_only_also_after_a_resume():
    cfg = load_config(None, ["federation.num_clients=1000", "evaluation.audit_clients=4"])
    audited = sorted(audited_clients(cfg))
    state = {"a.lora_A.weight": np.ones((1, 2), np.float32), "a.lora_B.weight": np.zeros((2, 1), np.float32)}
    rule = build_rule(cfg).start(state)
    others = [c for c in range(10) if c not in audited][:3]
    ids = sorted([audited[0], *others])
    rule.aggregate({i: state for i in ids}, {i: 1.0 for i in ids})
    assert set(rule.client_views()) == {audited[0]}
    resumed = build_rule(cfg).start(state)
    resumed.load_state_dict({**rule.state_dict(), "views": dict(rule.views)})  # a checkpoint's plain dict
    resumed.observe({c: state for c in [audited[1], *others]})
    assert set(resumed.client_views()) == {audited[0], audited[1]}
    assert isinstance(resumed.views, AuditViews)
    views = AuditViews([1], {1: ModelView(), 2: ModelView()})
    assert set(views) == {1}


def test_views_on_disk_are_written_as_they_arrive_held_as_paths_and_follow_a_moved_run_folder(tmp_path):
    import pickle

    cfg = load_config(None, ["federation.num_clients=6", "evaluation.audit_clients=2"])
    audited = sorted(audited_clients(cfg))
    rng = np.random.default_rng(0)
    state = {
        "a.lora_A.weight": rng.normal(size=(1, 2)).astype(np.float32),
        "a.lora_B.weight": np.zeros((2, 1), np.float32),
    }
    rule = build_rule(cfg).start(state)
    rule.keep_views_in(tmp_path / "run" / "views")
    rule.aggregate({c: state for c in range(6)}, {c: 1.0 for c in range(6)})
    files = sorted(p.name for p in (tmp_path / "run" / "views").iterdir())
    assert files == [f"client_{c}.safetensors" for c in audited]  # only the audited ones, no .tmp left
    assert all(isinstance(held, Path) for held in rule.views._held.values())  # nothing else kept in memory
    np.testing.assert_array_equal(rule.client_views()[audited[0]].lora["a.lora_A.weight"], state["a.lora_A.weight"])
    saved = pickle.loads(pickle.dumps(rule.state_dict()))  # what a checkpoint holds: paths, not arrays
    assert len(pickle.dumps(saved["views"])) < 1000
    (tmp_path / "run").rename(tmp_path / "moved")
    resumed = build_rule(cfg).start(state)
    resumed.load_state_dict(saved)
    resumed.keep_views_in(tmp_path / "moved" / "views")
    assert set(resumed.client_views()) == set(audited)
    view = resumed.client_views()[audited[1]]
    np.testing.assert_array_equal(view.lora["a.lora_A.weight"], state["a.lora_A.weight"])


# ---- a fixed number of clients per round -----------------------------------------------------


def test_clients_per_round_fixes_the_round_size_and_excludes_fraction_train():
    cfg = load_config(None, ["federation.num_clients=1000", "federation.clients_per_round=8"])
    assert sampled_per_round(cfg) == 8
    assert round(1000 * (sampled_per_round(cfg) / 1000)) == 8  # what the strategy's fraction gives back
    assert sampled_per_round(load_config(None, ["federation.num_clients=10", "federation.fraction_train=0.3"])) == 3
    with pytest.raises(ConfigError, match="federation.clients_per_round .* federation.fraction_train"):
        load_config(None, ["federation.clients_per_round=2", "federation.fraction_train=0.5"])
    with pytest.raises(ConfigError, match="exceeds federation.num_clients"):
        load_config(None, ["federation.num_clients=4", "federation.clients_per_round=5"])
    with pytest.raises(ConfigError, match="below the minimum"):
        load_config(None, ["federation.clients_per_round=-1"])


# ---- data for a thousand clients -------------------------------------------------------------


def test_shapes_is_fixed_and_splits_into_a_thousand_disjoint_clients():
    a, b = load_shapes(8), load_shapes(8)
    assert len(a) == NUM_IMAGES and a.ids == b.ids and np.array_equal(a.images, b.images)
    assert len(set(a.captions)) == 18 and a.images.min() < 50 and a.images.max() == 255
    cfg = load_config(
        None,
        [
            "data.dataset='shapes'",
            "data.image_size=8",
            "data.members_per_client=4",
            "data.nonmembers_per_client=4",
            "federation.num_clients=1000",
        ],
    )
    splits = make_splits(a, cfg.data, 1000, cfg.run.seed)
    every = [sid for c in splits.clients for sid in (*c.members, *c.nonmembers)]
    assert len(splits.clients) == 1000 and len(every) == len(set(every)) == 8000
    assert not set(every) & set(splits.public)
