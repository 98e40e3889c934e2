import math
import warnings

import numpy as np
import pytest
import torch

from fedlora.config import ModelConfig
from fedlora.models.base import load_pipeline
from fedlora.models.diffusion import encode_captions, encode_images, squared_error_map, training_scheduler
from fedlora.models.lora import attach_lora, load_lora_state, lora_state
from fedlora.privacy.dp_sgd import (
    DpSgdSettings,
    default_per_sample_loss,
    epsilon_for,
    history_from_array,
    history_to_array,
    per_sample_grad_hooks,
    train_lora_dp,
)

# Linear LoRA on attention and Conv2d LoRA on the resnets: both Opacus grad samplers are exercised.
TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2")
N = 8
OPACUS_ATTRS = ("grad_sample", "summed_grad", "_forward_counter", "_current_grad_sample")


class Model:
    def __init__(self, path: str):
        pipe = load_pipeline(path, cached=False)
        attach_lora(pipe.unet, ModelConfig(base_model=path, lora_targets=TARGETS), seed=0)
        self.unet, self.scheduler = pipe.unet, training_scheduler(pipe)
        images = np.random.default_rng(0).integers(0, 256, (N, 32, 32, 3), dtype=np.uint8)
        self.latents = encode_images(pipe.vae, images)
        self.cond = encode_captions(pipe.tokenizer, pipe.text_encoder, [f"digit {i} drawn by hand" for i in range(N)])
        self.start = lora_state(self.unet)

    def reset(self) -> None:
        load_lora_state(self.unet, self.start)
        self.unet.zero_grad(set_to_none=True)

    def randomize_b(self, seed: int) -> None:
        """B = 0 at init makes every A-gradient zero; a random B makes the check meaningful."""
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in self.unet.named_parameters():
                if "lora_B" in name:
                    p.copy_(0.05 * torch.randn(p.shape, generator=gen))

    def train(self, **kw):
        args = dict(steps=3, batch_size=4, learning_rate=1e-3, seed=0, settings=DpSgdSettings(1.0, 1.0, 1e-5))
        args.update(kw)
        return train_lora_dp(self.unet, self.scheduler, self.latents, self.cond, **args)

    def trainable(self):
        return [(n, p) for n, p in self.unet.named_parameters() if p.requires_grad]


@pytest.fixture(scope="module")
def model(tiny_base):
    return Model(tiny_base)


def hook_count(unet) -> int:
    return sum(len(m._forward_hooks) + len(m._backward_hooks) for m in unet.modules())


def assert_clean(unet) -> None:
    for name, p in unet.named_parameters():
        leftover = [a for a in OPACUS_ATTRS if hasattr(p, a)]
        assert not leftover, f"{name} keeps {leftover}"
    assert not any("activations" in m.__dict__ or "max_batch_len" in m.__dict__ for m in unet.modules())
    assert not hasattr(unet, "autograd_grad_sample_hooks")


@pytest.mark.parametrize("memory_format", [torch.channels_last, torch.contiguous_format])
def test_opacus_per_sample_gradients_match_single_sample_autograd(model, memory_format):
    """The opacus#820-style self-check. channels_last is what the VAE's cached latents are, and
    stock Opacus 1.6 gets Conv2d per-sample gradients wrong for it."""
    model.reset()
    model.randomize_b(seed=3)
    unet, sched = model.unet, model.scheduler
    conv_lora = [n for n, m in unet.named_modules() if n.endswith("lora_A.default") and isinstance(m, torch.nn.Conv2d)]
    assert conv_lora, "no Conv2d LoRA layer: the check would not cover Opacus' conv grad sampler"
    b = 4
    gen = torch.Generator().manual_seed(4)
    z, c = model.latents[:b].contiguous(memory_format=memory_format), model.cond[:b]
    noise = torch.randn(z.shape, generator=gen)
    t = torch.randint(0, sched.config.num_train_timesteps, (b,), generator=gen)
    named = model.trainable()
    unet.train()
    manual = []
    for i in range(b):
        err = squared_error_map(unet, sched, z[i : i + 1], c[i : i + 1], noise[i : i + 1], t[i : i + 1])
        manual.append(torch.autograd.grad(default_per_sample_loss(err).sum(), [p for _, p in named]))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        with per_sample_grad_hooks(unet):
            default_per_sample_loss(squared_error_map(unet, sched, z, c, noise, t)).sum().backward()
            per_sample = {n: p.grad_sample.detach().clone() for n, p in named}
    unet.eval()
    assert_clean(unet)
    worst = 0.0
    for j, (name, p) in enumerate(named):
        assert per_sample[name].shape == (b, *p.shape), name
        for i in range(b):
            ref = manual[i][j]
            assert ref.norm() > 0, f"{name}: zero reference gradient, the check is vacuous"
            worst = max(worst, float((per_sample[name][i] - ref).norm() / ref.norm()))
    print(f"{memory_format}: max relative per-sample gradient error, {len(named)} LoRA tensors x {b}: {worst:.2e}")
    assert worst < 1e-4
    model.reset()


def dp_steps(model, monkeypatch, **kw):
    """Train, recording each step's per-sample grads and the noised mean that reaches AdamW."""
    records = []
    original = torch.optim.AdamW.step

    def spy(self, *args, **kwargs):
        params = [p for g in self.param_groups for p in g["params"]]
        records.append(([p.grad_sample.detach().clone() for p in params], [p.grad.detach().clone() for p in params]))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    result = model.train(**kw)
    monkeypatch.undo()
    return result, records


def flat(tensors, i=None):
    return torch.cat([(t if i is None else t[i]).reshape(-1) for t in tensors])


def clipped_mean(grad_samples, clip: float, expected_batch: int) -> torch.Tensor:
    b = len(grad_samples[0])
    if b == 0:
        return torch.zeros(sum(g.shape[1:].numel() for g in grad_samples))
    per = torch.stack([flat(grad_samples, i) for i in range(b)])
    factor = (clip / (per.norm(dim=1) + 1e-6)).clamp(max=1.0)
    return (factor[:, None] * per).sum(0) / expected_batch


@pytest.mark.filterwarnings("ignore:Optimal order is the smallest alpha")  # sigma = 1e-6: epsilon is huge
def test_updates_are_clipped_per_sample_and_averaged_over_expected_batch(model, monkeypatch):
    model.reset()
    model.randomize_b(seed=5)
    clip, bs = 1e-3, 4
    result, records = dp_steps(
        model, monkeypatch, steps=2, batch_size=bs, settings=DpSgdSettings(1e-6, clip, 1e-5), seed=1
    )
    assert len(records) == 2 and all(b > 0 for b in result.batch_sizes)
    for (gs, grads), b in zip(records, result.batch_sizes):
        assert len(gs[0]) == b
        raw = torch.stack([flat(gs, i) for i in range(b)]).norm(dim=1)
        assert raw.min() > 20 * clip  # every sample is clipped, so an unclipped update would be far off
        got, want = flat(grads), clipped_mean(gs, clip, bs)
        assert got.norm() <= b * clip / bs * (1 + 1e-4)
        assert (got - want).norm() <= 1e-3 * want.norm()
    assert_clean(model.unet)
    model.reset()


def test_noise_std_and_empty_poisson_batches(model, monkeypatch):
    model.reset()
    model.randomize_b(seed=6)
    sigma, clip = 4.0, 1e-3
    result, records = dp_steps(
        model, monkeypatch, steps=6, batch_size=1, settings=DpSgdSettings(sigma, clip, 1e-5), seed=2
    )
    assert result.sample_rate == 1 / N
    assert 0 in result.batch_sizes, "seed chosen to draw an empty Poisson batch"
    assert len(result.losses) == 6 and math.isnan(result.losses[result.batch_sizes.index(0)])
    assert result.accountant_history == [(sigma, 1 / N, 6)]  # empty batches are accounted too
    for gs, grads in records:
        residual = flat(grads) - clipped_mean(gs, clip, 1)
        assert abs(float(residual.std()) / (sigma * clip) - 1) < 0.03
    assert_clean(model.unet)
    model.reset()


def test_same_seed_same_adapter_and_unet_is_left_clean(model):
    before = hook_count(model.unet)
    runs = []
    for seed in (11, 11, 12):
        model.reset()
        result = model.train(seed=seed, steps=3)
        runs.append((lora_state(model.unet), result.losses))
    (a, la), (b, lb), (c, _) = runs
    assert all(torch.equal(a[k], b[k]) for k in a)
    np.testing.assert_array_equal(la, lb)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert any(not torch.equal(a[k], model.start[k]) for k in a if "lora_B" in k)
    assert hook_count(model.unet) == before
    assert_clean(model.unet)
    assert not model.unet.training

    # A plain forward/backward afterwards is an ordinary autograd pass.
    model.unet.train()
    gen = torch.Generator().manual_seed(0)
    z, c = model.latents[:2], model.cond[:2]
    t = torch.randint(0, 1000, (2,), generator=gen)
    squared_error_map(model.unet, model.scheduler, z, c, torch.randn(z.shape, generator=gen), t).mean().backward()
    grads = [p.grad for _, p in model.trainable()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert_clean(model.unet)
    model.unet.eval()
    model.reset()


def test_failed_training_still_removes_hooks(model):
    before = hook_count(model.unet)
    model.reset()
    with pytest.raises(ValueError, match="one loss per sample"):
        model.train(per_sample_loss=lambda err: err.mean())  # a batch mean would couple samples
    assert hook_count(model.unet) == before
    assert_clean(model.unet)
    model.reset()


def test_epsilon_accumulates_across_calls_like_opacus_rdp_accountant(model):
    from opacus.accountants import RDPAccountant

    settings = DpSgdSettings(1.0, 1.0, 1e-5)
    model.reset()
    first = model.train(steps=3, batch_size=4, settings=settings, seed=1)
    carried = history_to_array(first.accountant_history)
    assert carried.dtype == np.float64 and carried.shape == (1, 3)
    history = history_from_array(carried)
    second = model.train(steps=3, batch_size=4, settings=settings, seed=2, accountant_history=history)
    reference = RDPAccountant()
    for _ in range(6):
        reference.step(noise_multiplier=1.0, sample_rate=0.5)
    assert second.accountant_history == reference.history == [(1.0, 0.5, 6)]
    assert second.epsilon == pytest.approx(reference.get_epsilon(delta=1e-5), rel=1e-12)
    assert first.epsilon == pytest.approx(epsilon_for([(1.0, 0.5, 3)], 1e-5), rel=1e-12)
    assert 0 < first.epsilon < second.epsilon
    model.reset()


def test_epsilon_for_matches_direct_rdp_analysis():
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

    orders = RDPAccountant.DEFAULT_ALPHAS
    rdp = compute_rdp(q=0.25, noise_multiplier=1.0, steps=40, orders=orders)
    direct = get_privacy_spent(orders=orders, rdp=rdp, delta=1e-5)[0]
    assert epsilon_for([(1.0, 0.25, 40)], 1e-5) == pytest.approx(direct, rel=1e-12)
    mixed = rdp + compute_rdp(q=0.1, noise_multiplier=2.0, steps=10, orders=orders)
    history = history_from_array(history_to_array([(1.0, 0.25, 40), (2.0, 0.1, 10)]))
    assert history == [(1.0, 0.25, 40), (2.0, 0.1, 10)] and isinstance(history[0][2], int)
    direct = get_privacy_spent(orders=orders, rdp=mixed, delta=1e-5)[0]
    assert epsilon_for(history, 1e-5) == pytest.approx(direct, rel=1e-12)
    assert epsilon_for([], 1e-5) == 0.0
    assert history_from_array(np.zeros((0, 3))) == []
    with pytest.raises(ValueError, match=r"shape \(k, 3\)"):
        history_from_array(np.ones((2, 2)))


@pytest.mark.parametrize(
    "args, key",
    [
        ((0.0, 1.0, 1e-5), "privacy.dp_noise_multiplier"),
        ((-1.0, 1.0, 1e-5), "privacy.dp_noise_multiplier"),
        ((float("nan"), 1.0, 1e-5), "privacy.dp_noise_multiplier"),
        ((1.0, 0.0, 1e-5), "privacy.dp_max_grad_norm"),
        ((1.0, 1.0, 0.0), "privacy.dp_delta"),
        ((1.0, 1.0, 1.0), "privacy.dp_delta"),
    ],
)
def test_bad_settings_name_the_key(args, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        DpSgdSettings(*args)


def test_batch_larger_than_client_data_names_the_key(model):
    with pytest.raises(ValueError, match=r"train\.batch_size"):
        model.train(batch_size=N + 1)
    with pytest.raises(ValueError, match=r"privacy\.dp_delta"):
        epsilon_for([(1.0, 0.5, 1)], 0.0)
    assert_clean(model.unet)
