"""Secure aggregation on Flower's SecAgg+: the config's refusals, the math fedlora adds around it,
whole federations in one process (LocalGrid: the real ServerApp and ClientApp code, Flower's
workflow and mod), and on Flower's simulation engine with a client that fails in round 2."""

import json

import numpy as np
import pytest
from flwr.common.secure_aggregation.quantization import dequantize, quantize
from local_grid import LocalGrid

from clients.app import app as client_app
from fedlora.config import ConfigError, load_config
from fedlora.outputs import METRICS_FILE, REPORT_FILE, SUMMARY_FILE
from fedlora.privacy.dp.dp_fedavg import clip_update
from fedlora.rounds import plain_reason
from fedlora.secure_aggregation import SecAggSettings, resolve
from server.app import run_federated

SECURE = [
    "federation.num_clients=3",
    "federation.rounds=2",
    "federation.secure_aggregation=true",
    "evaluation.attacks=['loss-threshold']",
    "evaluation.quality_samples=0",
]


def secure_cfg(tmp_path, *extra):
    return load_config("configs/smoke.toml", [f"run.output_dir='{tmp_path}'", *SECURE, *extra])


def rows_of(run_dir):
    return [json.loads(line) for line in (run_dir / METRICS_FILE).read_text().splitlines()]


# ---- config ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "reason"),
    [("flora", "stacks every client's A and B"), ("svd", "product B_k A_k on the server")],
)
def test_rules_that_are_not_a_weighted_mean_are_refused_with_the_reason(rule, reason):
    with pytest.raises(ConfigError, match="secure_aggregation") as err:
        load_config(
            "configs/smoke.toml",
            [
                "federation.secure_aggregation=true",
                f"federation.aggregation='{rule}'",
                "federation.client_ranks=[2, 4]",
            ],
        )
    assert reason in str(err.value) and "['fedavg', 'ffa', 'fedsa']" in str(err.value)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["privacy.dp='dp-fedavg'", "privacy.dp_clipping='server'"], "dp_clipping = 'client'"),
        (["federation.secagg_num_shares=2"], "secagg_num_shares = 2"),
        (["federation.secagg_num_shares=3", "federation.secagg_reconstruction_threshold=3"], "threshold = 3"),
        (["federation.secagg_num_shares=2.5"], "whole number"),
        (["federation.secagg_quantization_range=2000000000"], "would wrap"),
        (["federation.num_clients=1"], "at least 2 clients"),
    ],
)
def test_secure_aggregation_settings_it_cannot_run_are_refused(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(
            "configs/smoke.toml", ["federation.num_clients=3", "federation.secure_aggregation=true", *overrides]
        )


def test_oracle_and_fault_injection_are_checked():
    with pytest.raises(ConfigError, match="secagg_oracle = true needs"):
        load_config("configs/smoke.toml", ["federation.secagg_oracle=true"])
    with pytest.raises(ConfigError, match="PARTITION@ROUND"):
        load_config("configs/smoke.toml", ["simulation.fail_clients=['client-1']"])
    with pytest.raises(ConfigError, match="round 5"):
        load_config("configs/smoke.toml", ["simulation.fail_clients=['1@5']"])


# ---- math around the protocol ---------------------------------------------------------------


def test_shares_and_threshold_follow_flowers_rules():
    assert resolve(1.0, 0.6, 8) == (8, 5)
    assert resolve(1.0, 0.6, 3) == (3, 2)
    assert resolve(1.0, 0.6, 2) == (2, 2)
    assert resolve(0.5, 0.6, 8) == (5, 3)  # an even share count below the sample grows by one
    assert resolve(3, 2, 8) == (3, 2)


def test_flowers_quantizer_stays_within_the_bound_and_clips_what_we_count():
    rng = np.random.default_rng(0)
    settings = SecAggSettings(1.0, 0.6, clipping_range=2.0, quantization_range=2**24, modulus_range=2**32, max_weight=8)
    values = rng.normal(0, 0.3, 4000).astype(np.float32)
    values[:5] = [2.5, -5.0, 2.1, 1.9, -1.99]  # 3 beyond the range at ratio 1
    np.random.seed(0)
    decoded = dequantize(quantize([values.astype(np.float64)], 2.0, 2**24), 2.0, 2**24)[0]
    inside = np.abs(values) <= 2.0
    assert np.max(np.abs(decoded[inside] - values[inside])) <= settings.level()
    assert settings.clipped_values({"x": values}, weight=8) == 3
    assert settings.clipped_values({"x": values}, weight=4) == 1  # ratio 1/2: only -5.0 is beyond 2
    assert settings.error_bound([8, 8]) == pytest.approx(4 / 2**24)
    assert settings.error_bound([4, 4]) == pytest.approx(8 / 2**24)


def test_client_clipping_bounds_the_update_norm_and_keeps_its_direction():
    payload = {"a": np.ones(3, np.float32), "b": np.zeros(2, np.float32)}
    upload = {"a": np.array([4, 1, 1], np.float32), "b": np.array([0, 4], np.float32)}  # update norm 5
    clipped = clip_update(upload, payload, 1.0)
    delta = np.concatenate([clipped[k] - payload[k] for k in payload])
    assert np.linalg.norm(delta) == pytest.approx(1.0, rel=1e-6)
    np.testing.assert_allclose(delta, np.array([3, 0, 0, 0, 4]) / 5, rtol=1e-6)
    small = clip_update(upload, payload, 10.0)
    assert all(np.allclose(small[k], upload[k]) for k in upload)


def test_failure_reasons_lose_ray_tracebacks_and_colours():
    ray = (
        "<class 'ray.exceptions.RayTaskError(ClientAppException)'>:<'\x1b[36mray::ClientAppActor.run()\x1b[39m "
        "(pid=1)\n  File ...\nException ClientAppException occurred. Message: partition 1 fails in round 2'>"
    )
    assert plain_reason(ray) == "partition 1 fails in round 2"
    assert plain_reason("Node Unavailable") == "Node Unavailable"


# ---- federations in one process --------------------------------------------------------------


@pytest.mark.timeout(300)
@pytest.mark.parametrize("rule", ["fedavg", "ffa", "fedsa"])
def test_the_aggregate_matches_the_weighted_mean_of_the_same_updates(tmp_path, rule):
    cfg = secure_cfg(tmp_path, f"federation.aggregation='{rule}'", "federation.secagg_oracle=true")
    run_dir, _ = run_federated(LocalGrid(client_app, 3), cfg)
    rounds = rows_of(run_dir)[1:]
    for row in rounds:
        assert row["sampled"] == [0, 1, 2] and row["secagg_dropped"] == [] and row["secagg_clipped_values"] == 0
        # the decoded aggregate against the oracle's exact weighted mean: quantization, and no more
        assert 0 < row["secagg_max_abs_error"] <= row["secagg_error_bound"] < 1e-6
        assert row["wire_bytes_up_per_client"] > row["bytes_up_per_client"] > 0
    summary = json.loads((run_dir / SUMMARY_FILE).read_text())
    secure = summary["secure_aggregation"]
    assert secure["enabled"] and secure["shares_per_round"] == 3 and secure["threshold_per_round"] == 2
    assert secure["max_abs_error"] <= secure["error_bound"]
    assert "oracle" in summary["privacy"]["clients_from"] and set(summary["privacy"]["clients"]) == {"0", "1", "2"}
    assert "simulation oracle" in (run_dir / REPORT_FILE).read_text()


@pytest.mark.timeout(300)
def test_without_the_oracle_the_server_has_no_client_update_to_audit(tmp_path):
    run_dir, _ = run_federated(LocalGrid(client_app, 3), secure_cfg(tmp_path))
    summary = json.loads((run_dir / SUMMARY_FILE).read_text())
    assert summary["privacy"]["clients"] == {} and "clients" not in summary["privacy"]["verdict"]
    assert summary["secure_aggregation"]["client_audit"].startswith("none")
    assert summary["secure_aggregation"]["max_abs_error"] is None
    rows = rows_of(run_dir)
    assert all("secagg_max_abs_error" not in r for r in rows)
    assert all(0 <= r["round_calibrated_auc"] <= 1 for r in rows)  # each round's aggregate, attacked
    report = (run_dir / REPORT_FILE).read_text()
    assert "the server held no client's update" in report and "not measured (no oracle)" in report


@pytest.mark.timeout(300)
def test_same_config_same_aggregate(tmp_path):
    from safetensors.numpy import load_file

    finals = []
    for k in range(2):
        run_dir, _ = run_federated(LocalGrid(client_app, 3), secure_cfg(tmp_path / str(k)))
        finals.append(load_file(str(run_dir / "views" / "global.safetensors")))
    assert finals[0].keys() == finals[1].keys()
    assert all(np.array_equal(finals[0][k], finals[1][k]) for k in finals[0])


@pytest.mark.timeout(300)
def test_a_round_with_too_few_clients_left_is_skipped_not_crashed(tmp_path):
    cfg = secure_cfg(tmp_path, "simulation.fail_clients=['1@2', '2@2']")
    run_dir, _ = run_federated(LocalGrid(client_app, 3), cfg)
    r1, r2 = rows_of(run_dir)[1:]
    assert "skipped" not in r1 and r2["skipped"].startswith("SecAgg+ halted")
    assert r2["secagg_dropped"] == [1, 2] and len(r2["failures"]) == 2
    assert r2["member_loss"] == r1["member_loss"]  # the global model did not move
    assert json.loads((run_dir / SUMMARY_FILE).read_text())["secure_aggregation"]["rounds_skipped"] == [2]


@pytest.mark.timeout(300)
def test_dp_on_the_secure_sum_is_accounted_and_says_who_adds_the_noise(tmp_path):
    cfg = secure_cfg(
        tmp_path,
        "privacy.dp='dp-fedavg'",
        "privacy.dp_clipping='client'",
        "privacy.dp_max_grad_norm=0.05",
        "federation.secagg_oracle=true",
    )
    run_dir, _ = run_federated(LocalGrid(client_app, 3), cfg)
    rows = rows_of(run_dir)
    assert [r["dp_releases"] for r in rows] == [0, 1, 2] and rows[-1]["dp_epsilon"] > rows[1]["dp_epsilon"] > 0
    dp = json.loads((run_dir / SUMMARY_FILE).read_text())["privacy"]["dp"]
    assert dp["noise_added_by"].startswith("the server") and "SecAgg+" in dp["covers"]
    assert dp["noise_std"] == pytest.approx(1.0 * 0.05 / 3)
    assert all(
        set(c) <= {"train_s", "setup_s", "process_s", "steps", "num-examples", "rounds_trained", "secagg_clipped"}
        for c in rows[1]["clients"].values()
    )


# ---- Flower's simulation engine -------------------------------------------------------------


@pytest.mark.timeout(600)
@pytest.mark.parametrize("rule", ["fedavg", "ffa", "fedsa"])
def test_secure_aggregation_on_the_simulation_engine(tmp_path, rule):
    from fedlora.simulation import run_experiment

    # fedavg: partition 1 raises in round 2, after the key exchange; SecAgg+ reconstructs around it
    fail = ["simulation.fail_clients=['1@2']"] if rule == "fedavg" else []
    cfg = secure_cfg(tmp_path, f"federation.aggregation='{rule}'", "federation.secagg_oracle=true", *fail)
    run_dir = run_experiment(cfg)
    r1, r2 = rows_of(run_dir)[1:]
    assert r1["secagg_dropped"] == [] and len(r1["clients"]) == 3
    if fail:
        assert r2["secagg_dropped"] == [1] and sorted(r2["clients"]) == ["0", "2"]
        assert r2["failures"] == ["partition 1: partition 1 fails in round 2 (simulation.fail_clients)"]
    assert all(r["secagg_max_abs_error"] <= r["secagg_error_bound"] for r in (r1, r2))
    summary = json.loads((run_dir / SUMMARY_FILE).read_text())
    assert summary["secure_aggregation"]["dropouts"] == (1 if fail else 0)
