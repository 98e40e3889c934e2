"""The three local objectives and the proxy attacker: values and gradients on small tensors."""

import math

import pytest
import torch
from torch.nn import functional as F

from fedlora.config import PrivacyConfig, load_config
from fedlora.privacy.attacker import MEMBER, MembershipMLP, ProxyAttacker, member_cross_entropy
from fedlora.privacy.objectives import (
    LoraObjective,
    MembershipBatches,
    build_objective,
    mp_lora_loss,
    objective_class,
    smp_lora_loss,
)

NO_BATCHES = MembershipBatches(aux=lambda k: (None, None), test=lambda: (None, None))


def _paper_privacy(**overrides):
    """The paper's formula: one draw, the reward not capped, the ascent unbounded, no base anchor."""
    keys = dict(attacker_feature_draws=1, cap_gain_at_chance=False, max_ascent=0.0, base_anchor=0.0)
    return PrivacyConfig(**{**keys, **overrides})


def test_mp_and_smp_values_and_gradients_by_hand():
    l_ada = torch.tensor(0.3, requires_grad=True)
    g = torch.tensor(-0.7, requires_grad=True)
    lam, delta = 0.05, 1e-5
    mp = mp_lora_loss(l_ada, g, lam)
    assert mp.item() == pytest.approx(0.3 + 0.05 * -0.7)
    dl, dg = torch.autograd.grad(mp, (l_ada, g))
    assert (dl.item(), dg.item()) == pytest.approx((1.0, lam))

    smp = smp_lora_loss(l_ada, g, lam, delta)
    denom = 1 - lam * -0.7 + delta
    assert smp.item() == pytest.approx(0.3 / denom)
    dl, dg = torch.autograd.grad(smp, (l_ada, g))
    # d/dL = 1 / (1 - lam G + delta); d/dG = L * lam / (1 - lam G + delta)^2  (paper App. D factors)
    assert dl.item() == pytest.approx(1 / denom)
    assert dg.item() == pytest.approx(0.3 * lam / denom**2)


def test_smp_denominator_never_below_one_plus_delta():
    g = -torch.rand(100) * 20  # G is a mean log-probability, so <= 0
    l_ada = torch.rand(100)
    out = smp_lora_loss(l_ada, g, 0.05, 1e-5)
    assert torch.all(out <= l_ada / (1 + 1e-5) + 1e-12)


def test_lora_objective_is_mean_squared_error_and_gradient():
    err = torch.tensor([[1.0, 4.0], [9.0, 2.0]], requires_grad=True)
    loss, metrics = LoraObjective().loss(err)
    assert loss.item() == pytest.approx(4.0)
    (grad,) = torch.autograd.grad(loss, err)
    assert torch.allclose(grad, torch.full_like(err, 0.25))
    assert metrics["loss_ada"] == pytest.approx(4.0)


def _attacker(seed=0, dropout=0.0):
    return ProxyAttacker(8, lr=1e-3, weight_decay=1e-4, dropout=dropout, seed=seed)


def test_member_cross_entropy_matches_formula_and_leaves_attacker_fixed():
    att = _attacker()
    att.model.eval()
    err = torch.rand(3, 2, 2, 2, requires_grad=True)
    ce = member_cross_entropy(att.model, err)
    expected = -F.log_softmax(att.model(err), dim=1)[:, MEMBER].mean()
    assert ce.item() == pytest.approx(expected.item(), rel=1e-6)
    ce.backward()
    assert err.grad is not None and err.grad.abs().sum() > 0
    assert all(p.grad is None for p in att.model.parameters())


@pytest.mark.parametrize("method", ["mp-lora", "smp-lora"])
def test_private_objective_gradient_through_one_loss_map(method):
    """L_ada and G come from the same error map; the gradient w.r.t. it matches the closed form."""
    att = _attacker()
    att.model.eval()  # no dropout, so the closed form is deterministic
    privacy = _paper_privacy(mi_lambda=0.5, stabilizer=1e-5, attacker_features="error")
    obj = objective_class(method)(privacy, att, NO_BATCHES)
    err = torch.rand(4, 2, 2, 2, requires_grad=True)
    loss, metrics = obj.loss(err)
    (grad,) = torch.autograd.grad(loss, err)

    e = err.detach().requires_grad_(True)
    l_ada = e.mean()
    gain = F.log_softmax(att.model(e), dim=1)[:, MEMBER].mean()
    dl = torch.autograd.grad(l_ada, e, retain_graph=True)[0]
    dg = torch.autograd.grad(gain, e)[0]
    if method == "mp-lora":
        expected = dl + 0.5 * dg
        assert loss.item() == pytest.approx(l_ada.item() + 0.5 * gain.item(), rel=1e-6)
    else:
        denom = 1 - 0.5 * gain.item() + 1e-5
        expected = dl / denom + l_ada.item() * 0.5 / denom**2 * dg
        assert loss.item() == pytest.approx(l_ada.item() / denom, rel=1e-6)
    assert torch.allclose(grad, expected, atol=1e-7, rtol=1e-5)
    assert metrics["mi_gain"] == pytest.approx(gain.item(), rel=1e-5)


def test_attacker_learns_a_separable_rule():
    att = ProxyAttacker(8, lr=1e-2, weight_decay=0.0, dropout=0.0, seed=0)
    gen = torch.Generator().manual_seed(0)
    for _ in range(60):
        members = torch.rand(16, 8, generator=gen) * 0.5
        nonmembers = 0.5 + torch.rand(16, 8, generator=gen) * 0.5
        metrics = att.step(torch.cat([members, nonmembers]), torch.tensor([1] * 16 + [0] * 16))
    assert metrics["attacker_acc"] > 0.95
    assert att.updates == 60


def test_attacker_state_round_trip_continues_training_exactly():
    """Round 2 continues from round 1's attacker: weights AND Adam moments survive the dict."""
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.rand(6, 8, generator=gen), torch.tensor([1, 1, 1, 0, 0, 0])) for _ in range(6)]
    straight = _attacker(seed=3)
    for x, y in batches:
        straight.step(x, y)

    first = _attacker(seed=3)
    for x, y in batches[:3]:
        first.step(x, y)
    state = first.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    second = _attacker(seed=99)  # another init: everything must come from the state
    second.load_state_dict(state)
    for x, y in batches[3:]:
        second.step(x, y)
    for (k, a), b in zip(straight.model.state_dict().items(), second.model.state_dict().values()):
        assert torch.equal(a, b), k
    assert second.updates == 6


def test_attacker_state_of_another_shape_is_refused():
    with pytest.raises(ValueError, match="lacks"):
        _attacker().load_state_dict({"updates": torch.tensor(1)})


def test_build_objective_names():
    assert type(build_objective(load_config(None, ["train.method='lora'"]))) is LoraObjective
    for method in ("mp-lora", "smp-lora"):
        obj = build_objective(load_config(None, [f"train.method='{method}'"]), 8, NO_BATCHES)
        assert type(obj) is objective_class(method) and objective_class(method).needs_aux
        assert isinstance(obj.attacker.model, MembershipMLP)
    with pytest.raises(ValueError, match="needs the client's aux and test loss maps"):
        build_objective(load_config(None, ["train.method='smp-lora'"]), 8)


def test_attacker_architecture_is_the_papers():
    mlp = MembershipMLP(256)
    linear = [m for m in mlp.net if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [(256, 512), (512, 256), (256, 2)]
    drop = [m for m in mlp.net if isinstance(m, torch.nn.Dropout)]
    assert len(drop) == 2 and all(math.isclose(d.p, 0.5) for d in drop)


def test_calibrated_multi_draw_features_average_own_minus_base_errors():
    from fedlora.privacy.objectives import StepBatch

    gen = torch.Generator().manual_seed(0)
    shape = (4, 2, 2, 2)
    draws = [
        (torch.rand(shape, generator=gen), torch.rand(shape, generator=gen), torch.tensor([1, 2, 3, 4]))
        for _ in range(3)
    ]
    extra = iter(draws[1:])
    batch = StepBatch(
        noise=draws[0][1], t=draws[0][2], redraw=lambda: next(extra), base_error=lambda noise, t: 0.5 * noise
    )  # "the base model's error" at (ε, t)
    privacy = _paper_privacy(attacker_features="calibrated", attacker_feature_draws=3)
    obj = objective_class("smp-lora")(privacy, _attacker(), NO_BATCHES)
    l_ada, seen = obj.features(draws[0][0], batch)
    assert l_ada.item() == pytest.approx(torch.stack([e.mean() for e, _, _ in draws]).mean().item())
    torch.testing.assert_close(seen, torch.stack([e - 0.5 * n for e, n, _ in draws]).mean(0))
    with pytest.raises(ValueError, match="need the step's batch"):
        obj.features(draws[0][0], None)
    plain = objective_class("smp-lora")(_paper_privacy(attacker_features="error"), _attacker(), NO_BATCHES)
    l_plain, seen_plain = plain.features(draws[0][0], None)  # the paper's: the map itself, one draw
    assert seen_plain is draws[0][0] and l_plain.item() == pytest.approx(draws[0][0].mean().item())


def test_calibrated_loss_features_are_each_samples_relative_loss_change_against_the_base():
    from fedlora.privacy.objectives import StepBatch
    from fedlora.privacy.objectives.membership import attacker_input_size, relative_loss_change

    gen = torch.Generator().manual_seed(1)
    shape = (3, 2, 2, 2)
    draws = [
        (torch.rand(shape, generator=gen) + 0.1, torch.rand(shape, generator=gen) + 0.1, torch.tensor([5, 6, 7]))
        for _ in range(2)
    ]
    extra = iter(draws[1:])
    batch = StepBatch(noise=draws[0][1], t=draws[0][2], redraw=lambda: next(extra), base_error=lambda n, t: 2.0 * n)
    privacy = _paper_privacy(attacker_features="calibrated-loss", attacker_feature_draws=2)
    obj = objective_class("smp-lora")(privacy, _attacker(), NO_BATCHES)
    err = draws[0][0].clone().requires_grad_(True)
    _, seen = obj.features(err, batch)
    own = sum(e.mean(dim=(1, 2, 3)) for e, _, _ in draws)
    base = sum((2.0 * n).mean(dim=(1, 2, 3)) for _, n, _ in draws)
    assert seen.shape == (3, 1)
    torch.testing.assert_close(seen.detach(), ((own - base) / base).unsqueeze(1))
    seen.sum().backward()  # the push reaches the member batch's own error map
    assert err.grad is not None and bool((err.grad > 0).all())
    same = [torch.full(shape, 0.2)] * 2
    torch.testing.assert_close(relative_loss_change(same, same), torch.zeros(3, 1))
    assert attacker_input_size(PrivacyConfig(attacker_features="calibrated-loss"), 4096) == 1
    assert attacker_input_size(PrivacyConfig(attacker_features="calibrated"), 4096) == 4096
    profile = PrivacyConfig(attacker_features="calibrated-profile", attacker_feature_draws=8, attacker_profile_bands=4)
    assert attacker_input_size(profile, 4096) == 4
