"""The Stable Diffusion 1.5 architecture with random weights, built in code from its published
component configs, so that the LoRA targets, the proxy attacker's input size and the diffusers
adapter round trip are exercised on the real shapes without a download.

What matches SD-1.5 (``runwayml/stable-diffusion-v1-5``'s ``*/config.json``): the UNet
(4-channel latents, block channels 320/640/1280/1280, cross-attention 768, attention head
dim 8, latent side 64 = 512 px), the VAE (128/256/512/512, 4 latent channels, scaling 0.18215),
the CLIP ViT-L/14 text tower (hidden 768, 12 layers, 12 heads, 77 tokens) and the PNDM scheduler
with SD's betas (scaled_linear 0.00085–0.012, 1000 steps). What does not: the weights (random)
and the tokenizer, a local character-level CLIPTokenizer (``tiny.build_tokenizer``), so the text
encoder's embedding table has that tokenizer's vocabulary instead of CLIP's 49,408 BPE tokens.

``SD15Spec``'s cuts (layers per block, text-encoder depth, latent side) keep every width and
attention shape and only drop repeated layers: what the tests train on a CPU (only the
benchmark's dry run narrows the UNet too). To use it as a
base, ``build_sd15_pipeline(spec).save_pretrained(folder)`` and set ``model.base_model`` to the
folder; ``scripts/bench_gpu.py`` times the uncut UNet.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .tiny import build_tokenizer

SD15_BLOCK_CHANNELS = (320, 640, 1280, 1280)
SD15_VAE_CHANNELS = (128, 256, 512, 512)
SD15_CROSS_ATTENTION = 768
SD15_TEXT_TOKENS = 77
SD15_VAE_SCALING = 0.18215


@dataclass(frozen=True)
class SD15Spec:
    """SD-1.5's architecture; the defaults are the published configs, the cuts are for tests."""

    unet_layers_per_block: int = 2
    vae_layers_per_block: int = 2
    text_layers: int = 12
    sample_size: int = 64  # latent side: 64 x 8 = 512 px
    # UNet widths; narrower ones only for the benchmark's CPU dry run, which checks code, not shapes
    unet_channels: tuple[int, ...] = SD15_BLOCK_CHANNELS

    @property
    def image_size(self) -> int:
        return self.sample_size * 2 ** (len(SD15_VAE_CHANNELS) - 1)


def build_sd15_unet(spec: SD15Spec = SD15Spec()) -> Any:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=spec.sample_size,
        in_channels=4,
        out_channels=4,
        layers_per_block=spec.unet_layers_per_block,
        block_out_channels=spec.unet_channels,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=SD15_CROSS_ATTENTION,
        attention_head_dim=8,
        norm_num_groups=32,
        norm_eps=1e-5,
        act_fn="silu",
        downsample_padding=1,
        flip_sin_to_cos=True,
        freq_shift=0,
        mid_block_scale_factor=1,
        center_input_sample=False,
    )


def build_sd15_pipeline(spec: SD15Spec = SD15Spec(), seed: int = 0) -> Any:
    """A randomly initialised ``StableDiffusionPipeline`` with SD-1.5's component configs."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=SD15_VAE_CHANNELS,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=spec.vae_layers_per_block,
        norm_num_groups=32,
        act_fn="silu",
        sample_size=spec.image_size,
        scaling_factor=SD15_VAE_SCALING,
    )
    unet = build_sd15_unet(spec)
    tokenizer = build_tokenizer(SD15_TEXT_TOKENS)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=SD15_CROSS_ATTENTION,
            intermediate_size=3072,
            num_attention_heads=12,
            num_hidden_layers=spec.text_layers,
            max_position_embeddings=SD15_TEXT_TOKENS,
            hidden_act="quick_gelu",
            projection_dim=768,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )
    scheduler = PNDMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        skip_prk_steps=True,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
