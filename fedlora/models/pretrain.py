"""``fedlora pretrain``: the embedded base model, trained on the public split only.

Stage 1 fits the autoencoder (reconstruction + a tiny KL term), stage 2 fits the UNet and
text encoder on the frozen latents with caption dropout (for classifier-free guidance).
The private data that clients later fine-tune on never enters this step.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import ExperimentConfig
from ..data import load_dataset, public_subset
from .base import BASE_INFO_FILE
from .diffusion import encode_images, images_to_tensor, squared_error_map, training_scheduler
from .tiny import TinyLDMSpec, build_tiny_pipeline

KL_WEIGHT = 1e-6


def _train_vae(
    vae: Any, images: np.ndarray, steps: int, batch_size: int, lr: float, rng: np.random.Generator
) -> list[float]:
    vae.train().requires_grad_(True)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr)
    losses = []
    for _ in tqdm(range(steps), desc="pretrain vae", mininterval=5):
        x = images_to_tensor(images[rng.integers(0, len(images), batch_size)])
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        loss = (rec - x).pow(2).mean() + KL_WEIGHT * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    vae.eval().requires_grad_(False)
    return losses


def _train_denoiser(
    pipe: Any, latents: torch.Tensor, captions: list[str], cfg: ExperimentConfig, rng: np.random.Generator
) -> list[float]:
    p = cfg.pretrain
    unet, te, tok = pipe.unet, pipe.text_encoder, pipe.tokenizer
    unet.train().requires_grad_(True)
    te.train().requires_grad_(True)
    sched = training_scheduler(pipe)
    ids = tok(
        captions, padding="max_length", truncation=True, max_length=tok.model_max_length, return_tensors="pt"
    ).input_ids
    empty = tok([""], padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids
    params = list(unet.parameters()) + list(te.parameters())
    opt = torch.optim.AdamW(params, lr=p.unet_learning_rate, weight_decay=1e-2)
    warmup = max(1, p.unet_steps // 20)
    lr_at = lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + np.cos(np.pi * s / p.unet_steps))  # noqa: E731
    sch = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    gen = torch.Generator().manual_seed(p.seed)
    losses = []
    for _ in tqdm(range(p.unet_steps), desc="pretrain unet", mininterval=5):
        idx = torch.from_numpy(rng.integers(0, len(latents), p.unet_batch_size))
        batch_ids = ids[idx].clone()
        drop = torch.from_numpy(rng.random(len(idx)) < p.caption_dropout)
        batch_ids[drop] = empty
        z = latents[idx]
        noise = torch.randn(z.shape, generator=gen)
        t = torch.randint(0, sched.config.num_train_timesteps, (len(idx),), generator=gen)
        loss = squared_error_map(unet, sched, z, te(batch_ids)[0], noise, t).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sch.step()
        losses.append(float(loss.detach()))
    unet.eval().requires_grad_(False)
    te.eval().requires_grad_(False)
    return losses


def pretrain(cfg: ExperimentConfig, command: str = "") -> Path:
    """Train and save the base pipeline plus ``fedlora_base.json`` (what it saw, and how)."""
    started = time.time()
    torch.manual_seed(cfg.pretrain.seed)
    rng = np.random.default_rng(cfg.pretrain.seed)
    public = public_subset(load_dataset(cfg.data), cfg.data)
    spec = TinyLDMSpec(image_size=cfg.data.image_size)
    pipe = build_tiny_pipeline(spec, seed=cfg.pretrain.seed)
    vae_losses = _train_vae(
        pipe.vae,
        public.images,
        cfg.pretrain.vae_steps,
        cfg.pretrain.vae_batch_size,
        cfg.pretrain.vae_learning_rate,
        rng,
    )
    pipe.vae.register_to_config(scaling_factor=1.0)
    raw = encode_images(pipe.vae, public.images)
    scaling = float(1.0 / raw.std())
    pipe.vae.register_to_config(scaling_factor=scaling)
    latents = raw * scaling
    unet_losses = _train_denoiser(pipe, latents, list(public.captions), cfg, rng)
    out = Path(cfg.pretrain.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out, safe_serialization=True)
    info = {
        "dataset": cfg.data.dataset,
        "image_size": cfg.data.image_size,
        "public_fraction": cfg.data.public_fraction,
        "public_seed": cfg.data.public_seed,
        "num_public": len(public),
        "public_ids_sha256": hashlib.sha256("\n".join(public.ids).encode()).hexdigest(),
        "architecture": asdict(spec),
        "pretrain": asdict(cfg.pretrain),
        "vae_scaling_factor": scaling,
        "final_vae_loss": float(np.mean(vae_losses[-50:])) if vae_losses else None,
        "final_denoising_loss": float(np.mean(unet_losses[-50:])),
        "seconds": round(time.time() - started, 1),
        "command": command,
        "torch": torch.__version__,
    }
    (out / BASE_INFO_FILE).write_text(json.dumps(info, indent=1))
    return out
