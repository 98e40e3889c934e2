import numpy as np
import pytest

from fedlora.config import load_config
from fedlora.data import load_dataset
from fedlora.local_training import client_round, round_seed
from fedlora.runtime import get_runtime, get_splits


def cfg_for(tiny_base, **extra):
    overrides = [f"model.base_model='{tiny_base}'", "data.dataset='digits'", "train.local_steps=6"]
    overrides += [f"{k}={v}" for k, v in extra.items()]
    return load_config("configs/smoke.toml", overrides)


def test_client_round_is_deterministic(tiny_base):
    cfg = cfg_for(tiny_base)
    start = get_runtime(cfg).get_lora()
    a = client_round(cfg, 1, start, server_round=3)
    b = client_round(cfg, 1, start, server_round=3)
    assert all(np.array_equal(a.state[k], b.state[k]) for k in a.state)
    assert a.stats.loss_mean == b.stats.loss_mean
    c = client_round(cfg, 1, start, server_round=4)  # another round draws other noise
    assert c.stats.loss_mean != a.stats.loss_mean
    assert round_seed(0, 1, 3) != round_seed(0, 3, 1)


def test_local_lora_training_lowers_member_loss(tiny_base):
    cfg = cfg_for(tiny_base, **{"train.local_steps": 40, "train.learning_rate": 1e-2})
    runtime = get_runtime(cfg)
    members = runtime.encode(load_dataset(cfg.data), get_splits(cfg).clients[0].members)
    start = runtime.get_lora()
    runtime.set_lora(start)
    before = runtime.mean_loss(members, draws=8, seed=5).mean()
    result = client_round(cfg, 0, start, server_round=1)
    runtime.set_lora(result.state)
    after = runtime.mean_loss(members, draws=8, seed=5).mean()
    assert after < before
    assert set(result.state) == set(start)
    changed = [k for k in start if not np.array_equal(start[k], result.state[k])]
    assert any("lora_B" in k for k in changed)  # B starts at zero and must move


def test_client_id_out_of_range(tiny_base):
    cfg = cfg_for(tiny_base)
    import pytest

    with pytest.raises(ValueError, match="outside 0..1"):
        client_round(cfg, 2, get_runtime(cfg).get_lora(), server_round=1)


@pytest.mark.parametrize("features", ["calibrated", "calibrated-loss", "calibrated-profile"])
def test_a_proxy_attacker_on_calibrated_multi_draw_features_trains(tiny_base, features):
    cfg = cfg_for(
        tiny_base,
        **{
            "train.method": "'smp-lora'",
            "privacy.attacker_features": f"'{features}'",
            "privacy.attacker_feature_draws": 2,
            "privacy.attacker_profile_bands": 2,
            "privacy.attacker_refresh_steps": 4,
            "privacy.attacker_steps": 2,
            "privacy.max_ascent": 1.0 if features == "calibrated-profile" else 0.0,  # bounds the profile push only
        },
    )
    start = get_runtime(cfg).get_lora()
    result = client_round(cfg, 0, start, server_round=1)
    assert result.stats.extra["attacker_updates"] == 2 * cfg.train.local_steps
    assert 0.0 <= result.stats.extra["attacker_test_acc"] <= 1.0 and result.objective_state
    again = client_round(cfg, 0, start, server_round=1)
    assert all(np.array_equal(result.state[k], again.state[k]) for k in result.state)  # still deterministic
