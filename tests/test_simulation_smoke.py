"""End to end: Flower's simulation engine on a private Ray instance, the shipped base, smoke config."""

import json

import numpy as np
import pytest
import torch

from fedlora.config import load_config
from fedlora.local_training import get_runtime
from fedlora.models.base import load_pipeline
from fedlora.outputs import ADAPTER_DIR, CONFIG_FILE, METRICS_FILE, REPORT_FILE, ROC_FIGURE, SAMPLES_FILE, SPLITS_FILE, SUMMARY_FILE, TRAINING_FIGURE
from fedlora.simulation import run_experiment

SUMMARY_KEYS = {"method", "aggregation", "num_clients", "rounds", "seed", "base_model", "dataset",
                "privacy", "quality", "timing", "communication"}


@pytest.mark.timeout(600)
def test_smoke_simulation_writes_every_output_and_a_loadable_adapter(tmp_path):
    cfg = load_config(
        "configs/smoke.toml",
        [f"run.output_dir='{tmp_path}'", "train.method='smp-lora'", "federation.rounds=2", "privacy.attacker_steps=2"],
    )
    result: dict = {}
    run_dir = run_experiment(cfg, result)

    for name in (CONFIG_FILE, SPLITS_FILE, METRICS_FILE, SUMMARY_FILE, REPORT_FILE, SAMPLES_FILE, TRAINING_FIGURE, ROC_FIGURE):
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
    assert set(privacy["clients"]) == {"0", "1"}
    n_test = cfg.data.members_per_client // 2 * cfg.federation.num_clients
    for attack, m in privacy["global"].items():
        assert {"auc", "auc_dev", "asr", "tpr_at_1pct_fpr", "tpr_at_5pct_fpr", "n_members", "n_nonmembers"} <= set(m)
        assert m["n_members"] == n_test and 0.0 <= m["asr"] <= 1.0, attack

    splits = json.loads((run_dir / SPLITS_FILE).read_text())
    assert len(splits["clients"]) == 2 and len(splits["clients"]["0"]["members"]) == cfg.data.members_per_client

    # the saved diffusers adapter on top of the base pipeline is the global model
    runtime = get_runtime(cfg)
    runtime.set_lora(result["global_state"])
    g = torch.Generator().manual_seed(0)
    size = runtime.unet.config.sample_size
    x = torch.randn(2, 4, size, size, generator=g)
    cond = torch.randn(2, 8, runtime.unet.config.cross_attention_dim, generator=g)
    t = torch.tensor([50, 700])
    with torch.no_grad():
        expected = runtime.unet(x, t, encoder_hidden_states=cond).sample
        fresh = load_pipeline(summary["base_model"], cached=False)
        fresh.load_lora_weights(str(run_dir / ADAPTER_DIR))
        got = fresh.unet(x, t, encoder_hidden_states=cond).sample
    np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=1e-5)
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in result["global_state"].items())
