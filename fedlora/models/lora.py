"""LoRA on the UNet via peft, and the A/B tensors that travel between clients and server."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch

from ..config import ModelConfig

LORA_A, LORA_B = "lora_A", "lora_B"
ADAPTER_WEIGHTS = "pytorch_lora_weights.safetensors"


def lora_config(model: ModelConfig):
    from peft import LoraConfig

    return LoraConfig(
        r=model.lora_rank,
        lora_alpha=model.lora_alpha,
        target_modules=list(model.lora_targets),
        init_lora_weights=True,  # A ~ Kaiming-uniform, B = 0: the adapter starts as a no-op
    )


def attach_lora(unet, model: ModelConfig, seed: int = 0) -> None:
    """Freeze the base UNet and add one trainable adapter; A's init depends only on ``seed``."""
    unet.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet.add_adapter(lora_config(model))
    found = [n for n, _ in unet.named_parameters() if LORA_A in n]
    if not found:
        raise ValueError(
            f"model.lora_targets = {list(model.lora_targets)} matched no UNet module; "
            "use attention projection names such as to_q, to_k, to_v, to_out.0"
        )


def lora_state(unet) -> dict[str, torch.Tensor]:
    """Only the adapter tensors, fp32 on CPU (Flower's ArrayRecord cannot carry bf16)."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().float().cpu().clone() for k, v in get_peft_model_state_dict(unet).items()}


def load_lora_state(unet, state: Mapping[str, torch.Tensor]) -> None:
    from peft import set_peft_model_state_dict

    expected = set(get_keys(unet))
    given = set(state)
    if expected != given:
        missing, extra = sorted(expected - given)[:3], sorted(given - expected)[:3]
        raise ValueError(f"LoRA state does not match the adapter: missing {missing}, unexpected {extra}")
    result = set_peft_model_state_dict(unet, dict(state))
    unexpected = getattr(result, "unexpected_keys", None) or []
    if unexpected:
        raise ValueError(f"LoRA state has keys the UNet does not accept: {unexpected[:3]}")


def get_keys(unet) -> list[str]:
    from peft import get_peft_model_state_dict

    return list(get_peft_model_state_dict(unet))


def save_adapter(directory: str | Path, state: Mapping[str, torch.Tensor], model: ModelConfig) -> Path:
    """diffusers' LoRA format, so ``pipeline.load_lora_weights(directory)`` restores it."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = lora_config(model)
    metadata = {"r": cfg.r, "lora_alpha": cfg.lora_alpha, "target_modules": sorted(cfg.target_modules)}
    StableDiffusionPipeline.save_lora_weights(
        directory,
        unet_lora_layers=convert_state_dict_to_diffusers(dict(state)),
        unet_lora_adapter_metadata=metadata,
        safe_serialization=True,
    )
    return directory / ADAPTER_WEIGHTS
