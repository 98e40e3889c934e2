"""Calibrated loss profiles (fedlora/privacy/loss_profile.py) and SMP-LoRA on them: values, draws, the
straight-through gradient and the bounded ascent, on a one-parameter stand-in for the UNet."""

import contextlib
from types import SimpleNamespace

import pytest
import torch

from fedlora.config import ConfigError, PrivacyConfig, load_config
from fedlora.evaluation.attacks.base import Samples
from fedlora.privacy.attacker import CHANCE_CE, MEMBER, ProxyAttacker, member_cross_entropy
from fedlora.privacy.loss_profile import SCALE, LossProfiles, band_edges, band_of
from fedlora.privacy.objectives import MembershipBatches, StepBatch, objective_class


class ScaledIdentity(torch.nn.Module):
    """ε_θ(z_t) = w · z_t; the base model predicts with w = 0 (the "adapter" is w)."""

    def __init__(self, w: float = 0.5):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(w))
        self.adapted = True

    def forward(self, x, t, encoder_hidden_states):
        return SimpleNamespace(sample=x * (self.w if self.adapted else 0.0))

    @contextlib.contextmanager
    def base(self):
        self.adapted = False
        try:
            yield
        finally:
            self.adapted = True


def scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000)


def profiles_of(unet, n=5, draws=8, bands=2, seed=3):
    gen = torch.Generator().manual_seed(0)
    samples = Samples(torch.randn(n, 1, 2, 2, generator=gen), torch.zeros(n, 1, 1))
    return LossProfiles(unet, scheduler(), samples, unet.base, draws, bands, seed)


def test_bands_split_the_timesteps_quadratically_and_cover_them():
    assert band_edges(1000, 4).tolist() == [0, 62, 250, 562, 1000]
    assert band_edges(1000, 1).tolist() == [0, 1000]
    edges = band_edges(1000, 4)
    counts = torch.bincount(band_of(torch.arange(1000), edges), minlength=4)
    assert counts.tolist() == [62, 188, 312, 438]  # P(band) is each band's width / T
    with pytest.raises(ValueError, match="attacker_profile_bands = 50"):
        band_edges(1000, 50)


def test_a_rows_draws_do_not_depend_on_the_rows_it_is_computed_with():
    p = profiles_of(ScaledIdentity())
    noise_alone, t_alone = p.draws_of(torch.tensor([3]))
    noise_with, t_with = p.draws_of(torch.tensor([0, 3]))
    assert torch.equal(noise_alone[0], noise_with[1]) and torch.equal(t_alone[0], t_with[1])
    assert (band_of(t_with[1], p.edges) == torch.arange(8) % 2).all()  # draw d lies in band d mod B


def test_profiles_are_the_relative_loss_change_per_band_on_the_same_draws():
    unet = ScaledIdentity(0.5)
    p = profiles_of(unet)
    values = p.refresh()
    noise, t = p.draws_of(torch.arange(5))
    alpha = p.scheduler.alphas_cumprod[t].view(5, 8, 1, 1, 1)
    z_t = alpha.sqrt() * p.samples.latents[:, None] + (1 - alpha).sqrt() * noise
    own = ((0.5 * z_t - noise) ** 2).mean(dim=(2, 3, 4)).view(5, 4, 2).mean(1)  # draw d = j * B + b
    base = (noise**2).mean(dim=(2, 3, 4)).view(5, 4, 2).mean(1)
    torch.testing.assert_close(values, SCALE * (own - base) / base, rtol=1e-4, atol=1e-5)


def test_a_partial_refresh_recomputes_only_its_rows():
    unet = ScaledIdentity(0.5)
    p = profiles_of(unet)
    before = p.refresh().clone()
    with torch.no_grad():
        unet.w.fill_(0.9)
    after = p.refresh(torch.tensor([1, 4]))
    assert torch.equal(after[[0, 2, 3]], before[[0, 2, 3]])
    assert not torch.allclose(after[[1, 4]], before[[1, 4]])


def test_the_straight_through_feature_has_the_cached_value_and_the_one_draw_gradient():
    p = profiles_of(ScaledIdentity())
    index, t = torch.tensor([0, 2, 4]), torch.tensor([10, 700, 999])
    ell = torch.tensor([0.3, 0.2, 0.1], requires_grad=True)
    seen = p.straight_through(index, ell, t)
    torch.testing.assert_close(seen.detach(), p.values[index])
    band, prob = band_of(t, p.edges), p.band_probability
    for i in range(3):
        (grad,) = torch.autograd.grad(seen[i].sum(), ell, retain_graph=True)
        expected = torch.zeros(3)
        expected[i] = SCALE / prob[band[i]] / p.base[index[i], band[i]]
        torch.testing.assert_close(grad, expected)


class Steep(torch.nn.Module):
    """A proxy sure that a lower loss means a member: P(member) = sigmoid(−a · Σ features)."""

    def __init__(self, a: float):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(a))

    def forward(self, x):
        member = -self.a * x.sum(dim=1)
        return torch.stack([torch.zeros_like(member), member], dim=1)  # class 1 = member


def test_the_gain_capped_at_chance_stops_rewarding_members_scored_below_it():
    proxy = Steep(0.1)
    x = torch.tensor([[-30.0], [30.0]], requires_grad=True)  # a member-looking and a non-member-looking row
    plain = member_cross_entropy(proxy, x)
    capped = member_cross_entropy(proxy, x, cap_at_chance=True)
    ce = torch.nn.functional.cross_entropy(proxy(x.detach()), torch.tensor([MEMBER, MEMBER]), reduction="none")
    assert ce[0] < CHANCE_CE < ce[1]
    assert capped.item() == pytest.approx(((ce[0] + CHANCE_CE) / 2).item())
    assert plain.item() > capped.item()
    (grad,) = torch.autograd.grad(capped, x)
    assert grad[0].item() != 0.0 and grad[1].item() == 0.0  # no push past chance


def _profile_objective(privacy, profiles, steepness):
    att = ProxyAttacker(privacy.attacker_profile_bands, lr=1e-3, weight_decay=0.0, dropout=0.0, seed=1)
    att.model = Steep(steepness)
    batches = MembershipBatches(aux=lambda k: (None, None), test=lambda: (None, None), profiles=profiles)
    return objective_class("smp-lora")(privacy, att, batches)


@pytest.mark.parametrize("max_ascent", [0.0, 0.5])
def test_smp_on_profiles_descends_each_members_loss_by_its_own_coefficient(max_ascent):
    """The gradient w.r.t. the error map is Σ_i c_i ∇ℓ_i: plain autograd through the ratio without a bound;
    with one, a steep proxy's ascent is cut to −max_ascent × each member's L_ada-only coefficient."""
    privacy = PrivacyConfig(
        attacker_features="calibrated-profile",
        attacker_feature_draws=8,
        attacker_profile_bands=2,
        mi_lambda=20.0,
        max_ascent=max_ascent,
        cap_gain_at_chance=False,
        base_anchor=0.0,
    )
    p = profiles_of(ScaledIdentity())
    obj = _profile_objective(privacy, p, steepness=0.5)
    index, t = torch.tensor([0, 1, 2, 3]), torch.tensor([5, 100, 400, 900])
    err = (torch.rand(4, 1, 2, 2, generator=torch.Generator().manual_seed(2)) + 0.1).requires_grad_(True)
    batch = StepBatch(noise=None, t=t, redraw=None, base_error=None, index=index)
    loss, metrics = obj.loss(err, batch)
    (got,) = torch.autograd.grad(loss, err)

    e = err.detach().requires_grad_(True)
    ell = e.mean(dim=(1, 2, 3))
    gain = -member_cross_entropy(obj.attacker.model, p.straight_through(index, ell, t))
    direct = obj.combine(ell.mean(), gain)
    assert loss.item() == pytest.approx(direct.item(), rel=1e-6)
    assert metrics["mi_gain"] == pytest.approx(gain.item(), rel=1e-6)
    (want,) = torch.autograd.grad(direct, e)
    unbounded = want.sum(dim=(1, 2, 3))  # c_i: ∂ℓ_i/∂err = 1/numel on each of its elements
    plain = 1.0 / (4 * (1 - 20.0 * gain.item() + privacy.stabilizer))
    assert int((unbounded < -0.5 * plain).sum()) >= 2  # this proxy pushes members' losses up, hard
    if max_ascent == 0:
        torch.testing.assert_close(got, want)
    else:
        torch.testing.assert_close(got.sum(dim=(1, 2, 3)), unbounded.clamp_min(-max_ascent * plain))


def test_profile_settings_are_validated_at_load_time():
    base = ["train.method='smp-lora'", "privacy.attacker_features='calibrated-profile'"]
    with pytest.raises(ConfigError, match="multiple of"):
        load_config(None, [*base, "privacy.attacker_feature_draws=6", "privacy.attacker_profile_bands=4"])
    with pytest.raises(ConfigError, match="privacy.max_ascent"):
        load_config(None, ["train.method='smp-lora'", "privacy.attacker_features='calibrated'", "privacy.max_ascent=1"])
    cfg = load_config(None, [*base, "privacy.attacker_feature_draws=8", "privacy.attacker_profile_bands=4"])
    assert cfg.privacy.attacker_profile_bands == 4


def test_base_anchor_adds_its_weight_times_the_mean_squared_move_from_the_base_model():
    """L_ada + w · mean ‖ε_θ − ε_base‖² on the step's own inputs: its gradient pulls the residual to the base's."""
    privacy = PrivacyConfig(
        attacker_features="calibrated-profile", attacker_profile_bands=1, mi_lambda=0.0, base_anchor=3.0, max_ascent=0.0
    )
    obj = _profile_objective(privacy, profiles_of(ScaledIdentity()), steepness=0.5)
    gen = torch.Generator().manual_seed(4)
    residual = torch.rand(4, 1, 2, 2, generator=gen).requires_grad_(True)
    base = torch.rand(4, 1, 2, 2, generator=gen)
    err = (torch.rand(4, 1, 2, 2, generator=gen) + 0.1).requires_grad_(True)
    batch = StepBatch(
        noise=None,
        t=torch.tensor([5, 100, 400, 900]),
        redraw=None,
        base_error=None,
        index=torch.tensor([0, 1, 2, 3]),
        residual=residual,
        base_residual=lambda noise, t: base,
    )
    loss, metrics = obj.loss(err, batch)
    moved = (residual.detach() - base).pow(2).mean()
    assert metrics["base_anchor"] == pytest.approx(moved.item(), rel=1e-6)
    denom = 1 + privacy.stabilizer  # λ = 0: SMP-LoRA's denominator is 1 + δ
    assert loss.item() == pytest.approx((err.detach().mean().item() + 3.0 * moved.item()) / denom, rel=1e-6)
    (grad,) = torch.autograd.grad(loss, residual)
    torch.testing.assert_close(grad, 3.0 * 2 * (residual.detach() - base) / residual.numel() / denom)
    with pytest.raises(ValueError, match="base_anchor needs"):
        obj.loss(err, StepBatch(noise=None, t=batch.t, redraw=None, base_error=None, index=batch.index))


@pytest.mark.parametrize("snapshot", [False, True])
def test_the_proxy_trains_on_rows_all_computed_by_one_model_under_profile_snapshot(snapshot):
    """Closed loop, the step recomputes its own members every step while D^nm_aux waits for the next refresh.
    Without a snapshot the proxy then trains on members from the model as it is now next to non-members from an
    older one (a difference it learned to read as membership); with one, every row it sees is from one model."""
    unet = ScaledIdentity(0.5)
    gen = torch.Generator().manual_seed(0)
    samples = Samples(torch.randn(5, 1, 2, 2, generator=gen), torch.zeros(5, 1, 1))
    p = LossProfiles(unet, scheduler(), samples, unet.base, 8, 1, seed=3, trained_rows=3)  # rows 0-2: members
    privacy = PrivacyConfig(
        attacker_features="calibrated-profile", attacker_profile_bands=1, profile_snapshot=snapshot, base_anchor=0.0
    )
    obj = _profile_objective(privacy, p, steepness=0.5)
    index, t = torch.tensor([0, 1]), torch.tensor([5, 100])
    err = (torch.rand(2, 1, 2, 2, generator=gen) + 0.1).requires_grad_(True)
    batch = StepBatch(noise=None, t=t, redraw=None, base_error=None, index=index)
    obj.loss(err, batch)  # step 0 refreshes: every row by w = 0.5
    at_refresh = p.values.clone()
    with torch.no_grad():
        unet.w.fill_(0.9)  # the model moves
    obj.steps = 1
    obj.loss(err, batch)  # step 1: no refresh; the closed loop recomputes rows 0 and 1 by w = 0.9
    assert not torch.allclose(p.values[:2], at_refresh[:2]) and torch.equal(p.values[2:], at_refresh[2:])
    seen = p.rows(torch.arange(5))
    if snapshot:
        torch.testing.assert_close(seen, at_refresh)  # all from w = 0.5
    else:
        torch.testing.assert_close(seen, p.values)  # rows 0-1 from w = 0.9, rows 2-4 from w = 0.5
