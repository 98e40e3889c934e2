"""Central DP accounting, implicit-DP mechanics, and the base-delta / fresh-LoRA helpers they rely on."""

import numpy as np
import pytest
import torch

from fedlora.config import load_config
from fedlora.models.lora import LORA_A, LORA_B, ModelView, init_lora, lora_layers
from fedlora.privacy.dp.dp_fedavg import DpFedAvg
from fedlora.privacy.dp.implicit_dp import ImplicitDp, scale_b_gradient_rows
from fedlora.runtime import get_runtime


def test_central_accountant_matches_dp_accounting_for_a_known_setting():
    from dp_accounting import GaussianDpEvent, SelfComposedDpEvent
    from dp_accounting.rdp import RdpAccountant
    from flwr.supercore.privacy_accounting import GaussianPrivacyEvent

    cfg = load_config(
        None,
        [
            "privacy.dp='dp-fedavg'",
            "privacy.dp_noise_multiplier=1.1",
            "privacy.dp_delta=1e-5",
            "federation.num_clients=8",
        ],
    )
    dp = DpFedAvg(cfg)
    assert dp.epsilon() == 0.0
    for _ in range(10):
        dp.accountant.compose(GaussianPrivacyEvent(noise_multiplier=1.1, sample_size=8, population_size=8))
    direct = RdpAccountant().compose(SelfComposedDpEvent(GaussianDpEvent(1.1), 10)).get_epsilon(1e-5)
    assert dp.epsilon() == pytest.approx(direct, rel=1e-9)
    assert dp.round_metrics()["dp_releases"] == 10
    summary = dp.summary()
    assert summary["formal"] and summary["epsilon"] == pytest.approx(direct, rel=1e-9) and summary["delta"] == 1e-5


def test_gaussian_a_init_has_variance_one_over_r_and_b_zero(tiny_base):
    cfg = load_config(
        "configs/smoke.toml",
        [
            f"model.base_model='{tiny_base}'",
            "data.dataset='digits'",
            "model.lora_rank=8",
            "model.lora_a_init='gaussian'",
        ],
    )
    unet = get_runtime(cfg).unet
    a = torch.cat([p.detach().flatten() for n, p in unet.named_parameters() if LORA_A in n])
    b = torch.cat([p.detach().flatten() for n, p in unet.named_parameters() if LORA_B in n])
    assert float(a.var()) == pytest.approx(1 / 8, rel=0.1) and not b.any()


def test_b_gradient_rows_are_rescaled_to_the_norm():
    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Module()
            self.lin.lora_B = torch.nn.Parameter(torch.zeros(5, 3))
            self.lin.lora_A = torch.nn.Parameter(torch.zeros(3, 4))

    toy = Toy()
    toy.lin.lora_B.grad = torch.randn(5, 3)
    toy.lin.lora_A.grad = torch.randn(3, 4)
    before_a = toy.lin.lora_A.grad.clone()
    scale_b_gradient_rows(toy, 0.25)
    np.testing.assert_allclose(toy.lin.lora_B.grad.norm(dim=1).numpy(), 0.25, rtol=1e-6)
    assert torch.equal(toy.lin.lora_A.grad, before_a)


def test_implicit_dp_reports_a_heuristic_not_an_epsilon():
    cfg = load_config(
        None,
        [
            "privacy.dp='implicit-dp'",
            "federation.aggregation='ffa'",
            "model.lora_a_init='gaussian'",
            "model.lora_rank=4",
            "train.batch_size=16",
        ],
    )
    s = ImplicitDp(cfg).summary()
    assert s["formal"] is False and s["guarantee"] == "none" and "epsilon" not in s
    assert not any("noise_multiplier" in k or "sigma" in k for k in s) and "no guarantee" in s["note"]


def test_base_deltas_apply_and_remove_exactly(tiny_base):
    cfg = load_config("configs/smoke.toml", [f"model.base_model='{tiny_base}'", "data.dataset='digits'"])
    runtime = get_runtime(cfg)
    prefix, layer = next(iter(lora_layers(runtime.unet)))
    original = layer.base_layer.weight.detach().clone()
    delta = np.full(tuple(original.shape), 0.5)
    runtime.show(ModelView(deltas={prefix: delta}))
    torch.testing.assert_close(layer.base_layer.weight, original + 0.5)
    runtime.show(ModelView())
    assert torch.equal(layer.base_layer.weight, original)
    with pytest.raises(ValueError, match="without a LoRA layer"):
        runtime.show(ModelView(deltas={"nope": delta}))


def test_fresh_lora_is_seeded_and_starts_as_a_no_op(tiny_base):
    cfg = load_config("configs/smoke.toml", [f"model.base_model='{tiny_base}'", "data.dataset='digits'"])
    runtime = get_runtime(cfg)
    unet = runtime.unet

    def a_values():
        return torch.cat([p.detach().flatten().clone() for n, p in unet.named_parameters() if LORA_A in n])

    init_lora(unet, 5)
    first = a_values()
    init_lora(unet, 6)
    assert not torch.equal(first, a_values())
    init_lora(unet, 5)
    assert torch.equal(first, a_values())
    assert not any(p.any() for n, p in unet.named_parameters() if LORA_B in n)
    with pytest.raises(ValueError, match="lora_a_init"):
        init_lora(unet, 5, "orthogonal")
    runtime.set_lora(runtime.initial)  # the runtime is shared by the tests of this process


def test_training_figure_draws_runs_whose_clients_withhold_their_losses(tmp_path):
    """Under a DP mode the replies carry only timing; the figure must still be drawn (it once raised KeyError)."""
    from fedlora.reports.figures import plot_training

    rows = [
        {"round": 0, "member_loss": 0.1, "nonmember_loss": 0.1},
        {"round": 1, "member_loss": 0.09, "nonmember_loss": 0.1, "clients": {"0": {"train_s": 1.0, "steps": 4.0}}},
    ]
    out = tmp_path / "training.png"
    plot_training(out, rows)
    assert out.stat().st_size > 0


def _amplified(clients: int, extra: tuple[str, ...] = ()) -> DpFedAvg:
    cfg = load_config(
        None,
        [
            "privacy.dp='dp-fedavg'",
            "privacy.dp_noise_multiplier=1.0",
            "privacy.dp_sampling_amplification=true",
            f"federation.num_clients={clients}",
            *extra,
        ],
    )
    return DpFedAvg(cfg)


def test_sampling_amplification_accounts_m_of_n_without_replacement_at_half_sigma():
    from dp_accounting import GaussianDpEvent, SampledWithoutReplacementDpEvent, SelfComposedDpEvent
    from dp_accounting.privacy_accountant import NeighboringRelation
    from dp_accounting.rdp import RdpAccountant

    dp = _amplified(1000)
    for _ in range(10):
        dp.accountant.compose_raw(1.0, 8)
    event = SampledWithoutReplacementDpEvent(1000, 8, GaussianDpEvent(0.5))  # replace-one: sensitivity 2C
    direct = RdpAccountant(neighboring_relation=NeighboringRelation.REPLACE_ONE)
    direct = direct.compose(SelfComposedDpEvent(event, 10)).get_epsilon(1e-5)
    assert dp.epsilon() == pytest.approx(direct, rel=1e-9) and dp.releases() == 10
    s = dp.summary()
    assert s["population"] == 1000 and "replace-one" in s["protects"] and "without replacement" in s["accountant"]


def test_sampling_amplification_pays_off_only_when_few_of_many_clients_train():
    from flwr.supercore.privacy_accounting import GaussianPrivacyEvent

    def eps(clients: int, amplified: bool) -> float:
        extra = () if amplified else ("privacy.dp_sampling_amplification=false",)
        dp = _amplified(clients, extra)
        for _ in range(10):
            dp.accountant.compose(GaussianPrivacyEvent(noise_multiplier=1.0, sample_size=8, population_size=clients))
        return dp.epsilon()

    assert eps(1000, True) < eps(1000, False) / 3 and eps(1000, True) < eps(100, True) < eps(100, False)
    assert eps(8, True) > eps(8, False)  # everyone trains: replace-one costs more than add-or-remove


def test_sampled_accountant_state_round_trips():
    dp = _amplified(100)
    dp.accountant.compose_raw(1.0, 8, 3)
    other = _amplified(100)
    other.load_state_dict(dp.state_dict())
    assert other.epsilon() == dp.epsilon() > 0 and other.releases() == 3
    with pytest.raises(ValueError, match="100 clients"):
        _amplified(50).load_state_dict(dp.state_dict())


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["privacy.dp='dp-lora'"], "dp_sampling_amplification"),
        (["federation.secure_aggregation=true", "privacy.dp_clipping='client'"], "secure_aggregation"),
    ],
)
def test_sampling_amplification_refuses_what_it_cannot_bound(overrides, match):
    from fedlora.errors import ConfigError

    base = ["privacy.dp='dp-fedavg'", "privacy.dp_sampling_amplification=true", "federation.num_clients=8"]
    with pytest.raises(ConfigError, match=match):
        load_config(None, base + overrides)
