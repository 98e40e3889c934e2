"""The SD-1.5 architecture (random weights, built in code) through the project's own paths:
saved with save_pretrained, loaded as ``model.base_model``, trained a few LoRA and SMP-LoRA
steps at 64 px, and the adapter round-tripped through diffusers' ``load_lora_weights``.

The pipeline keeps every SD-1.5 width and attention shape and cuts the repeated layers (one
per block, a one-layer text encoder) to stay within a CPU test's budget.
"""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch

from fedlora import runtime as runtime_module
from fedlora.config import load_config
from fedlora.local_training import client_round
from fedlora.models.base import load_pipeline
from fedlora.models.lora import save_adapter
from fedlora.models.sd15 import SD15_BLOCK_CHANNELS, SD15Spec, build_sd15_pipeline
from fedlora.privacy.attacker import ProxyAttacker
from fedlora.runtime import get_runtime

CUT = SD15Spec(unet_layers_per_block=1, vae_layers_per_block=1, text_layers=1, sample_size=8)  # 64 px


@pytest.fixture(scope="module")
def sd15_base(tmp_path_factory):
    path = tmp_path_factory.mktemp("sd15")
    pipe = build_sd15_pipeline(CUT, seed=0)
    pipe.save_pretrained(path)
    del pipe
    gc.collect()
    return str(path)


# configs/sd15.toml's proxy: the paper's MLP on single-draw error maps (latent loss maps at SD scale)
PAPER_MAPS = [
    "privacy.attacker_features='error'",
    "privacy.attacker_feature_draws=1",
    "privacy.attacker_hidden=[512, 256]",
    "privacy.max_ascent=0.0",
    "privacy.base_anchor=0.0",
]


def _cfg(base: str, method: str, *extra: str):
    return load_config(
        "configs/smoke.toml",
        [
            f'model.base_model="{base}"',
            f'train.method="{method}"',
            f"data.image_size={CUT.image_size}",
            "data.members_per_client=4",
            "data.nonmembers_per_client=4",
            "train.local_steps=2",
            "train.batch_size=2",
            "privacy.attacker_batch_size=2",
            *extra,
        ],
    )


def test_the_full_spec_is_sd15():
    """Parameter counts of the uncut architecture equal SD-1.5's published UNet and VAE (built
    without allocating weights)."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        pipe = build_sd15_pipeline(SD15Spec())
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(pipe.unet) == 859_520_964
    assert count(pipe.vae) == 83_653_863
    # CLIP ViT-L/14's text tower minus its 49,408-token embedding table, plus this tokenizer's
    assert count(pipe.text_encoder) == 123_060_480 - (49_408 - len(pipe.tokenizer)) * 768
    assert pipe.unet.config.block_out_channels == SD15_BLOCK_CHANNELS
    assert pipe.vae.config.scaling_factor == 0.18215
    assert SD15Spec().image_size == 512


def test_sd15_trains_lora_and_smp_lora_and_round_trips_through_diffusers(sd15_base, tmp_path):
    cfg = _cfg(sd15_base, "lora")
    runtime = get_runtime(cfg)
    assert runtime.pipe.unet.config.cross_attention_dim == runtime.pipe.text_encoder.config.hidden_size == 768
    # a LoRA on each target projection of every transformer block's self- and cross-attention:
    # 3 down blocks x L, the mid block, 3 up blocks x (L + 1) (16 blocks in SD-1.5, L = 2)
    per_block = CUT.unet_layers_per_block
    blocks = 3 * per_block + 1 + 3 * (per_block + 1)
    lora_modules = {k.rsplit(".lora_", 1)[0] for k in runtime.initial if ".lora_A" in k}
    assert len(lora_modules) == blocks * 2 * len(cfg.model.lora_targets)
    lora = client_round(cfg, 0, runtime.initial, server_round=1)
    smp_cfg = _cfg(sd15_base, "smp-lora", *PAPER_MAPS)
    smp = client_round(smp_cfg, 0, runtime.initial, server_round=1)
    for res in (lora, smp):
        assert np.isfinite(res.stats.loss_mean) and res.stats.steps == 2
        assert any(not np.array_equal(res.state[k], runtime.initial[k]) for k in res.state)
    assert smp.metrics["attacker_updates"] == 2 * smp_cfg.privacy.attacker_steps  # k per LoRA step
    # the proxy attacker sees SD's 4-channel latent loss maps: 4 x 8 x 8 here, 4 x 64 x 64 at 512 px
    assert smp.objective_state["mlp.net.0.weight"].shape[1] == 4 * CUT.sample_size**2
    assert ProxyAttacker(4 * 64 * 64, 1e-5, 0.0, 0.5, seed=0).model.in_features == 16384

    runtime.set_lora(smp.state)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, CUT.sample_size, CUT.sample_size, generator=gen)
    cond = torch.randn(2, 7, 768, generator=gen)
    t = torch.tensor([10, 700])
    with torch.no_grad():
        expected = runtime.unet(x, t, encoder_hidden_states=cond).sample
    save_adapter(tmp_path / "adapter", runtime.tensors(smp.state), cfg.model)
    del runtime
    runtime_module._RUNTIMES.clear()  # not two 2 GB UNets at once
    gc.collect()
    fresh = load_pipeline(sd15_base, cached=False)
    with torch.no_grad():
        untouched = fresh.unet(x, t, encoder_hidden_states=cond).sample
    fresh.load_lora_weights(str(tmp_path / "adapter"))
    with torch.no_grad():
        got = fresh.unet(x, t, encoder_hidden_states=cond).sample
    assert not torch.allclose(untouched, expected, atol=1e-6)  # the trained adapter changes the UNet
    np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=1e-4)
