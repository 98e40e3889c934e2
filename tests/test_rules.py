"""Each rule's server/client protocol on numpy adapters, with "training" = a seeded perturbation.

The identities: what the evaluation calls the global model must be the exact weighted mean of
the clients' updates (FFA, FLoRA, FlexLoRA at full rank), and each client gets what its rule says.
"""

import numpy as np
import pytest

from fedlora import aggregation as agg
from fedlora.config import ConfigError, load_config
from fedlora.rules import build_rule, client_rank, client_scaling, factor

LIN, CONV = "blk.attn.to_q", "blk.res.conv1"
D_OUT, D_IN, C_OUT, C_IN = 6, 5, 4, 3


def init_adapter(rank: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        f"{LIN}.lora_A.weight": rng.normal(size=(rank, D_IN)).astype(np.float32),
        f"{LIN}.lora_B.weight": np.zeros((D_OUT, rank), np.float32),
        f"{CONV}.lora_A.weight": rng.normal(size=(rank, C_IN, 3, 3)).astype(np.float32),
        f"{CONV}.lora_B.weight": np.zeros((C_OUT, rank, 1, 1), np.float32),
    }


def train(adapter, seed, train_a=True):
    rng = np.random.default_rng(seed)
    out = {}
    for k, v in adapter.items():
        moves = train_a or ".lora_B." in k
        out[k] = (v + 0.3 * rng.normal(size=v.shape)).astype(np.float32) if moves else v.copy()
    return out


def cfg_for(rule, ranks=(), n=3):
    overrides = [
        f"federation.aggregation='{rule}'",
        f"federation.num_clients={n}",
        "model.lora_rank=4",
        "model.lora_alpha=8",
    ]
    if ranks:
        overrides.append(f"federation.client_ranks={list(ranks)}")
    return load_config(None, overrides)


def run_rounds(cfg, rounds=2, weights=(1.0, 2.0, 3.0)):
    """The rule's protocol over ``rounds`` rounds; returns server, the client uploads of the last round, kept states."""
    n = cfg.federation.num_clients
    server = build_rule(cfg).start(init_adapter(cfg.model.lora_rank))
    kept = {c: {} for c in range(n)}
    trained_last = {}
    for rnd in range(1, rounds + 1):
        payloads = {c: server.payload(c) for c in range(n)}
        for c in range(n):
            server.mark_sent(c)
        uploads, eval_only = {}, {}
        for c in range(n):
            init = init_adapter(client_rank(cfg, c), seed=0 if cfg.federation.aggregation != "flora" else 100 * rnd + c)
            setup = server.client_setup(c, payloads[c], kept[c], init)
            trained = train(setup.adapter, seed=10 * rnd + c, train_a=cfg.federation.aggregation != "ffa")
            uploads[c] = server.client_upload(trained)
            kept[c] = server.client_keep(trained, setup)
            if server.client_eval_only(kept[c]):
                eval_only[c] = server.client_eval_only(kept[c])
            trained_last[c] = (trained, setup)
        server.aggregate(uploads, {c: weights[c] for c in range(n)}, eval_only)
    return server, uploads, kept, trained_last, payloads


def test_ffa_sends_only_b_keeps_a_shared_and_is_exact():
    cfg = cfg_for("ffa")
    server, uploads, _, trained, payloads = run_rounds(cfg)
    assert all(set(p) == set(factor(init_adapter(4), "B")) for p in payloads.values())  # B only down
    assert all(set(u) == set(factor(init_adapter(4), "B")) for u in uploads.values())  # B only up: half of fedavg
    a0 = factor(init_adapter(4), "A")
    for t, _ in trained.values():
        assert all(np.array_equal(t[k], v) for k, v in a0.items())
    p = np.array([1, 2, 3]) / 6
    expected = agg.mean_delta([t for t, _ in trained.values()], p)
    got = agg.delta_weights(server.global_view().lora)
    for prefix in expected:
        np.testing.assert_allclose(got[prefix], expected[prefix], rtol=1e-5, atol=1e-6)


def test_fedsa_shares_a_and_keeps_each_b_on_its_client():
    cfg = cfg_for("fedsa")
    server, uploads, kept, trained, payloads = run_rounds(cfg)
    assert all(set(u) == set(factor(init_adapter(4), "A")) for u in uploads.values())
    assert all(set(p) == set(factor(init_adapter(4), "A")) for p in payloads.values())
    for c, (t, _) in trained.items():
        assert all(np.array_equal(kept[c][k], t[k]) for k in factor(t, "B"))  # B stays home
    # round 2 started from the client's own B (kept in round 1) and the shared A
    a_mean = agg.fedsa([u for u in uploads.values()], [1, 2, 3])
    assert all(np.allclose(server.global_lora[k], v) for k, v in a_mean.items())
    s = cfg.model.lora_alpha / cfg.model.lora_rank
    personal = {c: agg.delta_weights({**a_mean, **factor(t, "B")}, s) for c, (t, _) in trained.items()}
    p = np.array([1, 2, 3]) / 6
    for prefix, d in server.global_view().deltas.items():
        np.testing.assert_allclose(d, sum(pk * personal[c][prefix] for pk, c in zip(p, range(3))), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("rule", ["flora", "svd"])
def test_heterogeneous_ranks_2_4_8_give_the_exact_weighted_mean(rule):
    cfg = cfg_for(rule, ranks=(2, 4, 8))
    server, uploads, kept, trained, payloads = run_rounds(cfg, rounds=1)
    assert [client_rank(cfg, c) for c in range(3)] == [2, 4, 8]
    p = np.array([1, 2, 3]) / 6
    scal = [client_scaling(cfg, c) for c in range(3)]
    assert scal == [4.0, 2.0, 1.0]
    expected = agg.mean_delta([uploads[c] for c in range(3)], p, scal)
    for prefix, d in server.global_view().deltas.items():
        np.testing.assert_allclose(d, expected[prefix], rtol=1e-6, atol=1e-9)
    # what each client receives next round
    nxt = {c: server.payload(c) for c in range(3)}
    if rule == "svd":
        for c in range(3):
            r = client_rank(cfg, c)
            assert nxt[c][f"{LIN}.lora_A.weight"].shape == (r, D_IN)
            assert nxt[c][f"{CONV}.lora_B.weight"].shape == (C_OUT, r, 1, 1)
        # the rank-8 client gets the whole mean (rank <= 2+4+8 but min(d_out, d_in) = 5 <= 8): exact
        got = agg.delta_weights(nxt[2], client_scaling(cfg, 2))
        np.testing.assert_allclose(got[LIN], expected[LIN], rtol=1e-5, atol=1e-7)
    else:
        # FLoRA: everyone downloads the stack of rank 2+4+8 and merges it into its base
        for c in range(3):
            assert nxt[c][f"{LIN}.lora_A.weight"].shape[0] == 14
            merged = server.client_setup(c, nxt[c], kept[c], init_adapter(client_rank(cfg, c), seed=7)).base_deltas
            for prefix in expected:
                np.testing.assert_allclose(merged[prefix], expected[prefix], rtol=1e-6, atol=1e-9)


def test_flora_download_grows_with_clients_and_missed_rounds():
    sizes = []
    for n in (2, 4):
        cfg = cfg_for("flora", n=n)
        server, *_ = run_rounds(cfg, rounds=1, weights=[1.0] * n)
        sizes.append(server.payload(0)[f"{LIN}.lora_A.weight"].shape[0])
    assert sizes == [8, 16]  # rank 4 per client, stacked
    cfg = cfg_for("flora", n=2)
    server, *_ = run_rounds(cfg, rounds=2, weights=[1.0, 1.0])
    server.delivered[1] = 0  # a client that merged nothing yet gets both rounds' stacks, whose sum is the global model
    late = server.payload(1)
    assert late[f"{LIN}.lora_A.weight"].shape[0] == 2 * 8
    for prefix, d in agg.delta_weights(late).items():
        np.testing.assert_allclose(d, server.global_view().deltas[prefix], rtol=1e-6, atol=1e-9)


def test_svd_first_round_restarts_dead_directions_without_changing_the_product():
    cfg = load_config(
        None, ["federation.aggregation='svd'", "federation.num_clients=2", "federation.client_ranks=[2, 4]"]
    )
    server = build_rule(cfg).start(init_adapter(cfg.model.lora_rank))
    payload = server.payload(1)  # W = 0: all-zero factors, which could never train
    assert all(not np.any(v) for v in payload.values())
    init = init_adapter(4, seed=3)
    adapter = server.client_setup(1, payload, {}, init).adapter
    assert np.array_equal(adapter[f"{LIN}.lora_A.weight"], init[f"{LIN}.lora_A.weight"])
    assert not np.any(adapter[f"{LIN}.lora_B.weight"])


def test_fedavg_server_carries_the_factor_means():
    cfg = cfg_for("fedavg")
    server, uploads, *_ = run_rounds(cfg, rounds=1)
    expected = agg.fedavg([uploads[c] for c in range(3)], [1, 2, 3])
    assert all(np.allclose(server.global_view().lora[k], v) for k, v in expected.items())


def test_rule_config_errors_name_the_keys():
    with pytest.raises(ConfigError, match="client_ranks"):
        load_config(None, ["federation.client_ranks=[2, 4]"])  # fedavg cannot mix ranks
    with pytest.raises(ConfigError, match="federation.aggregation"):
        load_config(None, ["federation.aggregation='median'"])
    with pytest.raises(ConfigError, match="at least 1"):
        load_config(None, ["federation.aggregation='svd'", "federation.client_ranks=[0, 4]"])
    with pytest.raises(ConfigError, match="lora_a_init"):
        load_config(None, ["privacy.dp='implicit-dp'", "federation.aggregation='ffa'"])
    with pytest.raises(ConfigError, match="dp-fedavg"):
        load_config(None, ["privacy.dp='dp-fedavg'", "federation.aggregation='svd'"])
