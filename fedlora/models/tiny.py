"""The embedded default latent diffusion model, built from diffusers/transformers parts.

Small enough to pretrain and fine-tune on two CPU cores, yet a real
``StableDiffusionPipeline``: AutoencoderKL (factor 4), a cross-attention UNet, a CLIP text
encoder and a character-level CLIP tokenizer that needs no download.
"""

from __future__ import annotations

import json
import string
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TOKENIZER_CHARS = string.ascii_lowercase + string.digits + "-'.,:&!()"
MAX_TOKENS = 48


@dataclass(frozen=True)
class TinyLDMSpec:
    """Architecture of the embedded base; recorded next to the weights it produced."""

    image_size: int = 32
    vae_channels: tuple[int, ...] = (32, 64, 64)
    unet_channels: tuple[int, ...] = (32, 64)
    unet_layers_per_block: int = 2
    text_width: int = 64
    text_layers: int = 2
    latent_channels: int = 4

    @property
    def vae_factor(self) -> int:
        return 2 ** (len(self.vae_channels) - 1)


def char_vocab() -> dict[str, int]:
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in TOKENIZER_CHARS:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    return vocab


def build_tokenizer(max_tokens: int = MAX_TOKENS) -> Any:
    """A CLIPTokenizer over single characters: any caption tokenizes, nothing is fetched."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        vocab, merges = Path(tmp) / "vocab.json", Path(tmp) / "merges.txt"
        vocab.write_text(json.dumps(char_vocab()))
        merges.write_text("#version: 0.2\n")
        return CLIPTokenizer(str(vocab), str(merges), model_max_length=max_tokens)


def build_tiny_pipeline(spec: TinyLDMSpec = TinyLDMSpec(), seed: int = 0) -> Any:
    """Randomly initialised pipeline with the given architecture (weights come from pretraining)."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    n_vae = len(spec.vae_channels)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=spec.latent_channels,
        block_out_channels=spec.vae_channels,
        down_block_types=("DownEncoderBlock2D",) * n_vae,
        up_block_types=("UpDecoderBlock2D",) * n_vae,
        layers_per_block=1,
        norm_num_groups=32,
        sample_size=spec.image_size,
    )
    n_unet = len(spec.unet_channels)
    unet = UNet2DConditionModel(
        sample_size=spec.image_size // spec.vae_factor,
        in_channels=spec.latent_channels,
        out_channels=spec.latent_channels,
        layers_per_block=spec.unet_layers_per_block,
        block_out_channels=spec.unet_channels,
        down_block_types=("CrossAttnDownBlock2D",) + ("DownBlock2D",) * (n_unet - 1),
        up_block_types=("UpBlock2D",) * (n_unet - 1) + ("CrossAttnUpBlock2D",),
        cross_attention_dim=spec.text_width,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    tokenizer = build_tokenizer()
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=spec.text_width,
            intermediate_size=2 * spec.text_width,
            num_attention_heads=4,
            num_hidden_layers=spec.text_layers,
            max_position_embeddings=MAX_TOKENS,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )
    scheduler = DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
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
