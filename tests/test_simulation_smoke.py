"""End to end: Flower's simulation engine on a private Ray instance, the shipped base, smoke config."""

import json

import numpy as np
import pytest
import torch

from fedlora.config import ConfigError, load_config
from fedlora.models.base import load_pipeline
from fedlora.outputs import (
    ADAPTER_DIR,
    CONFIG_FILE,
    METRICS_FILE,
    REPORT_FILE,
    ROC_FIGURE,
    SAMPLES_FILE,
    SPLITS_FILE,
    SUMMARY_FILE,
    TRAINING_FIGURE,
)
from fedlora.runtime import get_runtime
from fedlora.simulation import run_experiment

SUMMARY_KEYS = {
    "method",
    "aggregation",
    "num_clients",
    "rounds",
    "seed",
    "base_model",
    "dataset",
    "privacy",
    "quality",
    "timing",
    "communication",
}


@pytest.mark.timeout(600)
def test_smoke_simulation_writes_every_output_and_a_loadable_adapter(tmp_path):
    cfg = load_config(
        "configs/smoke.toml",
        [f"run.output_dir='{tmp_path}'", "train.method='smp-lora'", "federation.rounds=2", "privacy.attacker_steps=2"],
    )
    result: dict = {}
    run_dir = run_experiment(cfg, result)

    for name in (
        CONFIG_FILE,
        SPLITS_FILE,
        METRICS_FILE,
        SUMMARY_FILE,
        REPORT_FILE,
        SAMPLES_FILE,
        TRAINING_FIGURE,
        ROC_FIGURE,
    ):
        assert (run_dir / name).is_file(), name
    assert load_config(run_dir / CONFIG_FILE) == cfg

    summary = json.loads((run_dir / SUMMARY_FILE).read_text())
    assert SUMMARY_KEYS <= set(summary)
    assert summary["num_clients"] == 2 and summary["communication"]["bytes_up_per_client_round"] > 0
    assert set(summary["timing"]) == {"total_s", "train_s", "eval_s"}
    assert 0.0 <= summary["quality"]["caption_accuracy"] <= 1.0

    rows = [json.loads(line) for line in (run_dir / METRICS_FILE).read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert sorted(rows[1]["clients"]) == ["0", "1"] and rows[1]["failures"] == []
    # each client's proxy attacker survives the round in context.state: round 2 continues its count
    per_round = cfg.train.local_steps * cfg.privacy.attacker_steps
    for cid in ("0", "1"):
        assert rows[1]["clients"][cid]["attacker_updates"] == per_round
        assert rows[2]["clients"][cid]["attacker_updates"] == 2 * per_round
        assert 0.0 <= rows[2]["clients"][cid]["attacker_test_acc"] <= 1.0

    privacy = summary["privacy"]
    assert set(privacy["global"]) == set(cfg.evaluation.attacks)
    # the verdict per view, labelled low-FPR keys, and the report opening with the verdict
    assert privacy["verdict"]["global"]["attacks"] == len(cfg.evaluation.attacks)
    assert set(privacy["verdict"]["clients"]) == {"0", "1"} and "tpr_at_1pct_fpr_aux" in privacy["metric_keys"]
    report = (run_dir / REPORT_FILE).read_text().split("## Splits")[0]
    assert "**" in report and "global model" in report
    assert set(privacy["clients"]) == {"0", "1"}
    n_test = cfg.data.members_per_client // 2 * cfg.federation.num_clients
    for attack, m in privacy["global"].items():
        assert {"auc", "auc_dev", "asr", "tpr_at_1pct_fpr", "tpr_at_5pct_fpr", "n_members", "n_nonmembers"} <= set(m)
        assert m["n_members"] == n_test and 0.0 <= m["asr"] <= 1.0, attack

    splits = json.loads((run_dir / SPLITS_FILE).read_text())
    assert len(splits["clients"]) == 2 and len(splits["clients"]["0"]["members"]) == cfg.data.members_per_client

    view = result["global_view"]
    assert_adapter_is_the_global_model(cfg, run_dir, view, summary["base_model"])
    assert any("lora_B" in k and np.abs(np.asarray(v)).sum() > 0 for k, v in view.lora.items())

    # `fedlora evaluate`: the saved views reproduce the audit exactly, and new attacks can be added
    from fedlora.reevaluate import evaluate_run

    again = evaluate_run(run_dir)
    assert again["privacy"]["global"] == summary["privacy"]["global"]
    assert again["privacy"]["clients"] == summary["privacy"]["clients"]
    assert (
        again["communication"] == summary["communication"]
        and again["timing"]["train_s"] == summary["timing"]["train_s"]
    )
    more = evaluate_run(run_dir, ["evaluation.attacks=['loss-threshold', 'pia']", "evaluation.attack_clients=false"])
    assert set(more["privacy"]["global"]) == {"loss-threshold", "pia"} and more["privacy"]["clients"] == {}
    assert "pia" in load_config(run_dir / CONFIG_FILE).evaluation.attacks
    with pytest.raises(ConfigError, match="only changes \\[evaluation\\]"):
        evaluate_run(run_dir, ["train.local_steps=3"])


def assert_adapter_is_the_global_model(cfg, run_dir, view, base_model):
    """The saved diffusers adapter on top of the base pipeline computes the global model."""
    runtime = get_runtime(cfg)
    runtime.show(view)
    g = torch.Generator().manual_seed(0)
    size = runtime.unet.config.sample_size
    x = torch.randn(2, 4, size, size, generator=g)
    cond = torch.randn(2, 8, runtime.unet.config.cross_attention_dim, generator=g)
    t = torch.tensor([50, 700])
    with torch.no_grad():
        expected = runtime.unet(x, t, encoder_hidden_states=cond).sample
        fresh = load_pipeline(base_model, cached=False)
        fresh.load_lora_weights(str(run_dir / ADAPTER_DIR))
        got = fresh.unet(x, t, encoder_hidden_states=cond).sample
    np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=1e-5)
    runtime.show(type(view)())
    with torch.no_grad():
        base_out = runtime.unet(x, t, encoder_hidden_states=cond).sample
    assert not np.allclose(base_out.numpy(), expected.numpy(), atol=1e-6)  # training moved the model


FAST_EVAL = ["evaluation.attacks=['loss-threshold']", "evaluation.quality_samples=0", "federation.rounds=2"]


@pytest.mark.timeout(900)
@pytest.mark.parametrize(
    "name, overrides",
    [
        ("ffa", ["federation.aggregation='ffa'"]),
        ("fedsa", ["federation.aggregation='fedsa'"]),
        ("svd", ["federation.aggregation='svd'", "federation.client_ranks=[2, 8]"]),
        ("flora", ["federation.aggregation='flora'", "federation.client_ranks=[2, 8]"]),
        ("dp-fedavg", ["privacy.dp='dp-fedavg'", "privacy.dp_max_grad_norm=0.05"]),
        (
            "dp-fedavg-client",
            ["privacy.dp='dp-fedavg'", "privacy.dp_clipping='client'", "privacy.dp_max_grad_norm=0.05"],
        ),
        ("dp-lora", ["privacy.dp='dp-lora'"]),
        ("implicit-dp", ["privacy.dp='implicit-dp'", "federation.aggregation='ffa'", "model.lora_a_init='gaussian'"]),
    ],
)
def test_every_rule_runs_end_to_end(tmp_path, name, overrides):
    cfg = load_config(
        "configs/smoke.toml", [f"run.output_dir='{tmp_path}'", f"run.name='{name}'", *FAST_EVAL, *overrides]
    )
    result: dict = {}
    run_dir = run_experiment(cfg, result)
    summary = json.loads((run_dir / SUMMARY_FILE).read_text())
    rows = [json.loads(line) for line in (run_dir / METRICS_FILE).read_text().splitlines()]
    assert summary["aggregation"] == cfg.federation.aggregation and [r["round"] for r in rows] == [0, 1, 2]
    assert all(r["failures"] == [] and sorted(r["clients"]) == ["0", "1"] for r in rows[1:])
    comm = summary["communication"]
    initial = get_runtime(cfg).initial
    raw = {f: sum(4 * v.size for k, v in initial.items() if f"lora_{f}" in k) for f in "AB"}  # float32 bytes
    header = 256 * len(initial)  # generous serialisation overhead per array
    if name == "ffa":  # only B travels (down and up)
        assert raw["B"] <= comm["bytes_up_per_client_round"] < raw["B"] + header
        assert raw["B"] <= comm["bytes_down_per_client_round"] < raw["B"] + header
    if name == "fedsa":  # only A is shared; B goes up for the audit only and is counted apart
        assert raw["A"] <= comm["bytes_up_per_client_round"] < raw["A"] + header
        assert raw["B"] <= comm["bytes_eval_only_per_client_round"] < raw["B"] + header
    if name == "flora":  # round 1 has nothing to merge; round 2 downloads the rank 2+8 stack
        assert (
            rows[1]["bytes_down_per_client"] == 0 and rows[2]["bytes_down_per_client"] > rows[2]["bytes_up_per_client"]
        )
    if name in ("svd", "flora"):
        assert summary["client_ranks"] == [2, 8] and summary["adapter_rank"] >= 8
    assert set(summary["privacy"]["clients"]) == {"0", "1"}
    dp = summary["privacy"]["dp"]
    assert dp["mechanism"] == cfg.privacy.dp
    if cfg.privacy.dp == "dp-fedavg":  # one Gaussian release per round, no amplification
        from dp_accounting import GaussianDpEvent, SelfComposedDpEvent
        from dp_accounting.rdp import RdpAccountant

        direct = RdpAccountant().compose(SelfComposedDpEvent(GaussianDpEvent(cfg.privacy.dp_noise_multiplier), 2))
        assert dp["epsilon"] == pytest.approx(direct.get_epsilon(cfg.privacy.dp_delta), rel=1e-9)
        assert 0 < rows[1]["dp_epsilon"] < rows[2]["dp_epsilon"] == pytest.approx(dp["epsilon"])
    if cfg.privacy.dp == "dp-lora":  # each client: 2 rounds x local_steps Poisson-sampled Gaussian steps
        from fedlora.privacy.dp_sgd import epsilon_for

        q = cfg.train.batch_size / cfg.data.members_per_client
        direct = epsilon_for([(cfg.privacy.dp_noise_multiplier, q, 2 * cfg.train.local_steps)], cfg.privacy.dp_delta)
        assert set(dp["epsilon_per_client"]) == {"0", "1"}
        assert all(e == pytest.approx(direct, rel=1e-9) for e in dp["epsilon_per_client"].values())
        assert 0 < rows[1]["dp_epsilon"] < rows[2]["dp_epsilon"]
    if cfg.privacy.dp == "implicit-dp":
        assert dp["formal"] is False and dp["guarantee"] == "none" and "epsilon" not in dp
        assert not any("noise_multiplier" in k for k in dp)  # no number that reads like a guarantee
    if cfg.privacy.dp != "none":  # each DP summary names the party and the view its ε covers
        assert dp["covers"] and (dp["formal"] is False or dp["protects"])
        # nothing member-dependent in the clients' replies: no loss, no attacker accuracy
        assert all(not any("loss" in k or "attacker" in k for k in c) for r in rows[1:] for c in r["clients"].values())
    assert_adapter_is_the_global_model(cfg, run_dir, result["global_view"], summary["base_model"])
