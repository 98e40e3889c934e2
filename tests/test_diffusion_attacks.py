"""PIA, SecMI, SimA-style score norm and GSA-style gradient norms: their maths, their protocol
(choices on D_aux only) and their power on a deliberately overfit LoRA versus the same UNet with B = 0.

The overfit target is the embedded MNIST base (pretrained on the public split) with a rank-8 LoRA
trained hard on 24 private members; on the random ``tiny_base`` a LoRA learns a generic denoiser
first and shows no member/non-member loss gap within a test's budget.
"""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from fedlora.config import ConfigError, EvaluationConfig, load_config
from fedlora.data import load_dataset
from fedlora.evaluation.attacks import AttackSets, Samples, gradient_norm, pia, run_attacks, score_norm, secmi
from fedlora.models.lora import ModelView, set_trainable
from fedlora.privacy.objectives import LoraObjective
from fedlora.runtime import ModelRuntime, get_splits
from fedlora.training import train_lora

ATTACKS = ("pia", "secmi", "score-norm", "gradient-norm")
# the attacks this file adds to the suite's defaults: calibrated against the base, CLiD, SimA over
# several timesteps, offline LiRA
NEW_ATTACKS = (
    "loss-calibrated",
    "pia-calibrated",
    "secmi-calibrated",
    "score-norm-calibrated",
    "score-norm-multi",
    "clid",
    "clid-calibrated",
    "lira",
)
TARGETS = "['to_q', 'to_k', 'to_v', 'to_out.0', 'conv1', 'conv2']"


def _scheduler() -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


class FakeUNet(torch.nn.Module):
    """ε_θ(x, t, c) = a·x + b (a fixed function); records every query."""

    def __init__(self, slope: float = 0.0, shape=(4, 8, 8)):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.randn(shape, generator=torch.Generator().manual_seed(7)))
        self.slope = slope
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x, t, encoder_hidden_states):
        self.calls.append((x.detach().clone(), t.detach().clone()))
        return SimpleNamespace(sample=self.slope * x + self.bias)


def _fake(slope: float = 0.0) -> SimpleNamespace:
    return SimpleNamespace(unet=FakeUNet(slope), scheduler=_scheduler())


def _random_samples(n: int, seed: int) -> Samples:
    gen = torch.Generator().manual_seed(seed)
    return Samples(torch.randn((n, 4, 8, 8), generator=gen), torch.randn((n, 3, 5), generator=gen))


# ---------------------------------------------------------------- maths


def test_ddim_inversion_then_denoising_with_the_same_eps_is_the_identity():
    alphas = _scheduler().alphas_cumprod.double()
    gen = torch.Generator().manual_seed(0)
    x, eps = (torch.randn((3, 4, 8, 8), generator=gen, dtype=torch.float64) for _ in range(2))
    for t, k in [(0, 10), (100, 10), (500, 250)]:
        up = secmi.ddim_step(x, eps, float(alphas[t]), float(alphas[t + k]))
        assert not torch.allclose(up, x)
        torch.testing.assert_close(
            secmi.ddim_step(up, eps, float(alphas[t + k]), float(alphas[t])), x, rtol=0, atol=1e-12
        )


def test_secmi_t_error_vanishes_when_eps_theta_ignores_x_and_t():
    model = _fake(slope=0.0)
    samples = _random_samples(5, 1)
    scores = secmi.secmi_scores(model, samples, t_sec=100, k=10)
    assert scores.shape == (5,) and np.all(np.abs(scores) < 1e-8)
    ts = [int(t[0]) for _, t in model.unet.calls]
    # the released code's stepping: invert 0 -> 90 in steps of 10 (queries at 0..80), up to 100
    # (query at 90) and back to 90 (query at 100); the t-error is measured at 90
    assert ts == list(range(0, 101, 10))
    model = _fake(slope=0.0)
    da_secmi = secmi.secmi_scores(model, samples, t_sec=95, k=10)  # t_sec not a multiple of k
    assert da_secmi.shape == (5,) and [int(t[0]) for _, t in model.unet.calls] == list(range(0, 91, 10)) + [100]
    assert secmi.secmi_grid(100, 10) == (list(range(0, 91, 10)), 100) and secmi.secmi_grid(10, 10) == ([0], 10)
    # a predictor that depends on x breaks the round trip
    assert np.all(secmi.secmi_scores(_fake(slope=0.5), samples, 100, 10) < -1e-6)


def test_pia_builds_x_t_as_add_noise_with_eps_0_and_sima_queries_the_clean_latent():
    model = _fake(slope=0.3)
    samples = _random_samples(4, 2)
    scores = pia.pia_scores(model, samples, [50, 300])
    assert scores.shape == (2, 4)
    (x0_in, t0), (x50, t50), (x300, t300) = model.unet.calls
    torch.testing.assert_close(x0_in, samples.latents)
    assert t0.tolist() == [0] * 4 and t50.tolist() == [50] * 4 and t300.tolist() == [300] * 4
    eps0 = 0.3 * samples.latents + model.unet.bias.detach()
    for x_t, t in [(x50, 50), (x300, 300)]:
        expected = model.scheduler.add_noise(samples.latents, eps0, torch.full((4,), t))
        torch.testing.assert_close(x_t, expected, rtol=1e-6, atol=1e-6)
    # score = -sum |eps_theta(x_t, t) - eps0|^4
    err = 0.3 * x50 + model.unet.bias.detach() - eps0
    np.testing.assert_allclose(scores[0], -err.abs().pow(4).flatten(1).sum(1).numpy(), rtol=1e-5)

    model = _fake(slope=0.3)
    norms = score_norm.score_norm_scores(model, samples, [1, 25], p=4)
    (x_a, t_a), (x_b, t_b) = model.unet.calls
    torch.testing.assert_close(x_a, samples.latents)
    torch.testing.assert_close(x_b, samples.latents)
    assert t_a.tolist() == [1] * 4 and t_b.tolist() == [25] * 4
    eps = 0.3 * samples.latents + model.unet.bias.detach()
    np.testing.assert_allclose(norms[0], -eps.abs().pow(4).flatten(1).sum(1).numpy(), rtol=1e-5)


def test_timesteps_outside_the_schedule_are_refused_with_the_key():
    model = _fake()
    sets = AttackSets(*(_random_samples(4, s) for s in range(4)))
    with pytest.raises(ValueError, match=r"evaluation\.pia_timesteps = \[50, 1000\]"):
        pia.pia_attack(model, sets, (50, 1000))
    with pytest.raises(ValueError, match=r"evaluation\.score_norm_timesteps"):
        score_norm.score_norm_attack(model, sets, (1000,))
    with pytest.raises(ValueError, match=r"evaluation\.secmi_timesteps = \[50, 995\] and evaluation\.secmi_k = 10"):
        secmi.secmi_attack(model, sets, (50, 995), 10)
    with pytest.raises(ValueError, match=r"evaluation\.gradient_norm_timesteps"):
        gradient_norm.gradient_norm_attack(model, sets, (10, 2000), seed=0)


def test_config_keys():
    cfg = load_config(
        None,
        [
            "evaluation.attacks=['pia', 'secmi', 'score-norm', 'gradient-norm', 'loss-threshold']",
            "evaluation.pia_timesteps=[20, 40]",
            "evaluation.secmi_t=50",
            "evaluation.secmi_k=5",
        ],
    )
    # an older run's single secmi_t still loads: it becomes the one candidate
    assert cfg.evaluation.pia_timesteps == (20, 40) and cfg.evaluation.secmi_timesteps == (50,)
    assert EvaluationConfig().attacks == ("learned-mlp-paper", "learned-mlp", "loss-threshold")  # opt-in
    for bad, msg in [
        ("evaluation.pia_timesteps=[]", "at least one timestep"),
        ("evaluation.score_norm_timesteps=[0, 10]", "at least 1"),
        ("evaluation.secmi_k=0", "below the minimum"),
        ("evaluation.secmi_k=200", "must not exceed"),
        ("evaluation.diffusion_attack_sign='maybe'", "not allowed"),
    ]:
        with pytest.raises(ConfigError, match=msg):
            load_config(None, [bad])


# ---------------------------------------------------------------- on a real overfit LoRA


@pytest.fixture(scope="module")
def overfit():
    """Rank-8 LoRA (attention + resnet convs) trained 400 AdamW steps at lr 1e-2 on 24 members."""
    cfg = load_config(
        "configs/smoke.toml",
        [
            "data.dataset='mnist'",
            "data.members_per_client=24",
            "data.nonmembers_per_client=48",
            "model.lora_rank=8",
            "model.lora_alpha=8.0",
            f"model.lora_targets={TARGETS}",
            "train.local_steps=400",
            "train.batch_size=16",
            "train.learning_rate=1e-2",
            "train.max_grad_norm=0.0",
            f"evaluation.attacks={list(ATTACKS)}",
            "evaluation.pia_timesteps=[10, 50, 100, 200, 300]",
            "evaluation.secmi_k=10",
            "evaluation.gradient_norm_timesteps=[50, 250, 450, 650, 850]",
        ],
    )
    runtime = ModelRuntime(cfg)  # not the process cache: this adapter is for this module only
    dataset = load_dataset(cfg.data)
    split = get_splits(cfg).clients[0]  # the private pool: never seen by the base
    enc = lambda ids: runtime.encode(dataset, ids)  # noqa: E731
    sets = AttackSets(
        enc(split.member_aux), enc(split.nonmember_aux), enc(split.member_test), enc(split.nonmember_test)
    )
    train_lora(runtime, enc(split.members), cfg.train, LoraObjective(), seed=0)
    return SimpleNamespace(cfg=cfg, runtime=runtime, sets=sets, trained=runtime.get_lora())


def test_every_attack_finds_the_overfit_members_and_not_those_of_an_untouched_lora(overfit):
    rt, sets = overfit.runtime, overfit.sets
    assert len(sets.member_test) == 12 and len(sets.nonmember_test) == 24
    found = {}
    for name, view in [("overfit", ModelView(lora=overfit.trained)), ("reset", ModelView())]:
        rt.show(view)
        results = run_attacks(rt, sets, overfit.cfg.evaluation, seed=0)
        assert list(results) == list(ATTACKS)
        found[name] = {a: r.metrics["auc"] for a, r in results.items()}
        for a, r in results.items():
            assert r.metrics["n_members"] == 12 and r.metrics["n_nonmembers"] == 24
            assert "threshold" in r.details and (a == "gradient-norm" or "t" in r.details)
    rt.show(ModelView(lora=overfit.trained))
    print("AUC", found)
    for a in ATTACKS:
        assert found["overfit"][a] > 0.75, (a, found)
        # 12 vs 24 test samples: the AUC of a blind score has a standard deviation of about 0.1
        assert abs(found["reset"][a] - 0.5) < 0.3, (a, found)


def test_the_new_attacks_find_the_overfit_members_and_not_those_of_an_untouched_lora(overfit):
    """Calibrated attacks, CLiD, SimA over several t and offline LiRA, under the same protocol."""
    import dataclasses

    from fedlora.evaluation.membership import AuditModels

    rt, sets, cfg = overfit.runtime, overfit.sets, overfit.cfg
    ev = dataclasses.replace(
        cfg.evaluation,
        attacks=NEW_ATTACKS,
        clid_timesteps=(50, 200, 500),
        clid_draws=2,
        lira_shadows=2,
        score_norm_timesteps=(1, 10, 50, 100),
        loss_attack_draws=8,
    )
    shadow_recipe = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, local_steps=100))
    models = AuditModels(rt, shadow_recipe)
    found, calibrated_scores = {}, {}
    for name, view in [("overfit", ModelView(lora=overfit.trained)), ("reset", ModelView())]:
        rt.show(view)
        results = run_attacks(rt, sets, ev, 0, "test", models.reference, models.shadow)
        assert list(results) == list(NEW_ATTACKS)
        assert all(np.array_equal(rt.get_lora()[k], v) for k, v in rt.current.lora.items()) if view.lora else True
        found[name] = {a: r.metrics["auc"] for a, r in results.items()}
        calibrated_scores[name] = {a: r.scores for a, r in results.items() if a.endswith("-calibrated")}
        for a, r in results.items():  # 24 aux non-members fix a 5 % threshold, not a 1 % one
            assert r.metrics["tpr_at_5pct_fpr_aux"] is not None and r.metrics["tpr_at_1pct_fpr_aux"] is None, a
    rt.show(ModelView(lora=overfit.trained))
    print("AUC", found)
    for a in NEW_ATTACKS:
        assert found["overfit"][a] > 0.75, (a, found)
        assert abs(found["reset"][a] - 0.5) < 0.3, (a, found)
    # calibration against the base: the base model itself scores exactly 0 on every sample
    assert all(np.all(s == 0) for s in calibrated_scores["reset"].values())


def test_calibrated_attacks_refuse_an_audit_without_a_reference(overfit):
    import dataclasses

    ev = dataclasses.replace(overfit.cfg.evaluation, attacks=("loss-calibrated",))
    with pytest.raises(ValueError, match="compares against the base model"):
        run_attacks(overfit.runtime, overfit.sets, ev, seed=0)


def test_choices_are_made_on_aux_only(overfit, monkeypatch):
    """Swapping the test labels flips the test AUC but leaves t, sign and threshold alone."""
    rt, s = overfit.runtime, overfit.sets
    rt.show(ModelView(lora=overfit.trained))
    swapped = AttackSets(s.member_aux, s.nonmember_aux, s.nonmember_test, s.member_test)
    for attack in (
        lambda sets: pia.pia_attack(rt, sets, (10, 50, 100, 200, 300)),
        lambda sets: score_norm.score_norm_attack(rt, sets, (1, 10, 100)),
        lambda sets: secmi.secmi_attack(rt, sets, (20, 50, 100), 10),
    ):
        a, b = attack(s), attack(swapped)
        for key in ("t", "sign", "threshold", "aux_auc"):
            assert a.details[key] == b.details[key], key
        assert a.metrics["auc"] == pytest.approx(1 - b.metrics["auc"])

    # D_te is scored once, at the t chosen on aux
    seen: list[tuple[int, int]] = []
    real = pia.pia_scores

    def spy(model, samples, ts, p=4.0):
        seen.append((len(samples), len(ts)))
        return real(model, samples, ts, p)

    monkeypatch.setattr(pia, "pia_scores", spy)
    res = pia.pia_attack(rt, s, (10, 50, 100, 200, 300))
    assert seen == [(36, 5), (36, 1)] and res.details["t"] in (10, 50, 100, 200, 300)  # 12 + 24 aux, then 12 + 24 test


def test_gradient_attack_leaves_no_grad_and_restores_flags(overfit):
    rt, s = overfit.runtime, overfit.sets
    rt.show(ModelView(lora=overfit.trained))
    unet = rt.unet
    set_trainable(unet, train_a=False)  # an FFA-style client: A frozen
    unet.train()
    for p in unet.parameters():
        p.grad = None
    flags = {n: p.requires_grad for n, p in unet.named_parameters()}
    try:
        few = Samples(s.member_aux.latents[:3], s.member_aux.cond[:3])
        a = gradient_norm.gradient_norm_features(rt, few, (100, 500), seed=5)
        b = gradient_norm.gradient_norm_features(rt, few, (100, 500), seed=5)
        assert all(p.grad is None for p in unet.parameters())
        assert {n: p.requires_grad for n, p in unet.named_parameters()} == flags
        assert unet.training
        assert a.shape == (3, len(gradient_norm.lora_parameters(unet))) and np.all(a > 0)
        np.testing.assert_array_equal(a, b)  # seeded eps: deterministic
        assert not np.array_equal(a, gradient_norm.gradient_norm_features(rt, few, (100, 500), seed=6))
    finally:
        set_trainable(unet, train_a=True)
        unet.eval()


def test_loss_and_learned_attacks_also_find_the_overfit_members(overfit):
    """The earlier attacks under the same protocol: clearly above chance on the overfit LoRA, not on B = 0."""
    import dataclasses

    cfg = dataclasses.replace(
        overfit.cfg.evaluation,
        attacks=("loss-threshold", "learned-mlp"),
        attack_epochs=20,
        attack_learning_rate=1e-3,
        attack_feature_draws=4,
        loss_attack_draws=8,
    )
    rt, found = overfit.runtime, {}
    for name, view in [("overfit", ModelView(lora=overfit.trained)), ("reset", ModelView())]:
        rt.show(view)
        found[name] = {a: r.metrics["auc"] for a, r in run_attacks(rt, overfit.sets, cfg, seed=0).items()}
    rt.show(ModelView(lora=overfit.trained))
    print("AUC", found)
    for a in cfg.attacks:
        assert found["overfit"][a] > 0.75, (a, found)
        assert abs(found["reset"][a] - 0.5) < 0.3, (a, found)


# ---------------------------------------------------------------- the new attacks' maths


def test_offline_lira_statistic_uses_only_out_shadows_and_a_pooled_spread():
    from fedlora.evaluation.attacks.lira import balanced_halves, offline_lira_statistic

    inside = balanced_halves(10, 4, seed=0)
    assert inside.shape == (4, 10) and np.all(inside.sum(0) == 2)  # each sample in exactly half the shadows
    assert not np.array_equal(inside, balanced_halves(10, 4, seed=1))
    shadow = np.array([[1.0, 5.0], [3.0, 9.0], [100.0, -50.0]])  # 3 shadows x 2 samples
    out = np.array([[True, True], [True, True], [False, False]])  # the third shadow saw both: ignored
    stat = offline_lira_statistic(np.array([0.0, 7.0]), shadow, out)
    # out-means 2 and 7; residuals ±1 and ±2 -> pooled sigma sqrt((1+1+4+4) / (4 - 2)) = sqrt(5)
    np.testing.assert_allclose(stat, [(2 - 0) / np.sqrt(5), 0.0], rtol=1e-9)
    with pytest.raises(ValueError, match="at least one shadow"):
        offline_lira_statistic(np.zeros(2), shadow, np.zeros((3, 2), dtype=bool))


def test_calibration_subtracts_the_reference_on_the_same_arguments_and_log_scales_magnitudes():
    import contextlib

    from fedlora.evaluation.attacks.base import calibrated

    state = {"base": False}

    @contextlib.contextmanager
    def reference():
        state["base"] = True
        try:
            yield
        finally:
            state["base"] = False

    def score(x, scale):  # the "base model" scores 10x; both see the same arguments
        return -(np.asarray(x) * scale * (10.0 if state["base"] else 1.0))

    np.testing.assert_allclose(calibrated(score, reference)([1.0, 2.0], 3.0), [27.0, 54.0])
    np.testing.assert_allclose(calibrated(score, reference, log_magnitude=True)([1.0, 2.0], 3.0), np.log([10, 10]))
    assert state["base"] is False  # the reference is left again


def test_clid_scores_the_caption_effect_on_shared_draws():
    from fedlora.evaluation.attacks import clid

    class CaptionUNet(torch.nn.Module):
        """Predicts the noise exactly when conditioned on a caption (cond != 0), zeros without one."""

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.noise = None

        def forward(self, x, t, encoder_hidden_states):
            has_caption = encoder_hidden_states.flatten(1).abs().sum(1) > 0
            return SimpleNamespace(
                sample=torch.where(has_caption[:, None, None, None], self.noise, torch.zeros_like(x))
            )

    unet = CaptionUNet()
    model = SimpleNamespace(unet=unet, scheduler=_scheduler(), empty_caption=lambda n: torch.zeros(n, 3, 5))
    samples = _random_samples(3, 4)
    # with one draw the UNet can be told the draw's noise: the caption then removes the whole loss
    gen = torch.Generator().manual_seed(9 * 1009 + 50)
    unet.noise = torch.randn((1, *samples.latents.shape), generator=gen)[0]
    scores = clid.clid_scores(model, samples, [50], draws=1, seed=9)
    np.testing.assert_allclose(scores[0], unet.noise.pow(2).flatten(1).mean(1).numpy(), rtol=1e-5)
    assert np.all(scores > 0)


def test_multi_timestep_set_is_grown_on_aux_and_the_test_scored_once():
    from fedlora.evaluation.attacks.diffusion import multi_timestep_attack

    calls = []
    rng = np.random.default_rng(0)
    signal = {10: 2.0, 20: 1.0, 30: 0.0, 40: 0.0}  # how strongly each t separates members

    def scores(model, samples, ts, p):
        calls.append((len(samples), tuple(ts)))
        is_member = samples.cond[:, 0, 0] > 0
        return np.stack([signal[t] * is_member.numpy() + rng.normal(size=len(samples)) for t in ts])

    def sample_set(n, member):
        return Samples(torch.zeros((n, 4, 8, 8)), torch.full((n, 3, 5), 1.0 if member else -1.0))

    sets = AttackSets(sample_set(40, True), sample_set(40, False), sample_set(30, True), sample_set(30, False))
    res = multi_timestep_attack(scores, _fake(), sets, (10, 20, 30, 40), 4.0, True, "evaluation.score_norm_timesteps")
    chosen = [int(t) for t in res.details["timesteps"].split()]
    assert 10 in chosen and res.metrics["auc"] > 0.8
    assert calls == [(80, (10, 20, 30, 40)), (60, tuple(chosen))]  # aux once over every candidate, test once
