"""The denoising objective shared by pretraining, local LoRA training and evaluation.

Latents and caption embeddings are computed once per sample (the VAE and text encoder are
frozen during adaptation), so a training step costs one UNet pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

import numpy as np
import torch

from ..device import to_host


class SampleSet(Protocol):
    """Encoded samples: latents and caption embeddings, one row each (the runtime's EncodedSamples)."""

    latents: torch.Tensor
    cond: torch.Tensor

    def __len__(self) -> int: ...


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1], the VAE's input range."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def tensor_to_images(x: torch.Tensor) -> np.ndarray:
    return to_host(((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1)).numpy()


@torch.no_grad()
def encode_images(vae: Any, images: np.ndarray, batch_size: int = 64) -> torch.Tensor:
    """Scaled latents (the posterior mode, so cached latents are deterministic)."""
    out = []
    for i in range(0, len(images), batch_size):
        x = images_to_tensor(images[i : i + batch_size]).to(vae.device, vae.dtype)
        out.append(vae.encode(x).latent_dist.mode() * vae.config.scaling_factor)
    return torch.cat(out)


@torch.no_grad()
def encode_captions(tokenizer: Any, text_encoder: Any, captions: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    out = []
    for i in range(0, len(captions), batch_size):
        ids = tokenizer(
            list(captions[i : i + batch_size]),
            padding="max_length",
            truncation=True,
            max_length=tokenizer.model_max_length,
            return_tensors="pt",
        ).input_ids.to(text_encoder.device)
        out.append(text_encoder(ids)[0])
    return torch.cat(out)


def training_scheduler(pipeline: Any) -> Any:
    """DDPM forward process with the pipeline's own beta schedule."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(pipeline.scheduler.config)


def noise_residual(
    unet: Any,
    scheduler: Any,
    latents: torch.Tensor,
    cond: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
) -> torch.Tensor:
    """eps_theta(z_t, t, c) - eps per element (signed: two models' predictions can be compared)."""
    noisy = scheduler.add_noise(latents, noise, timesteps)
    return unet(noisy, timesteps, encoder_hidden_states=cond).sample - noise


def squared_error_map(
    unet: Any,
    scheduler: Any,
    latents: torch.Tensor,
    cond: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
) -> torch.Tensor:
    """(eps - eps_theta(z_t, t, c))^2 per element: L_ada's integrand and the MIA feature."""
    return noise_residual(unet, scheduler, latents, cond, noise, timesteps).pow(2)


@torch.no_grad()
def mean_denoising_loss(
    unet: Any, scheduler: Any, latents: torch.Tensor, cond: torch.Tensor, draws: int, seed: int, batch_size: int = 64
) -> torch.Tensor:
    """Per-sample loss averaged over ``draws`` fixed (t, eps) pairs: comparable across rounds."""
    gen = torch.Generator().manual_seed(seed)  # draws on the CPU: the same numbers on any device
    n = len(latents)
    total = torch.zeros(n, device=latents.device)
    for _ in range(draws):
        noise = torch.randn(latents.shape, generator=gen).to(latents.device)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (n,), generator=gen).to(latents.device)
        for i in range(0, n, batch_size):
            sl = slice(i, i + batch_size)
            err = squared_error_map(unet, scheduler, latents[sl], cond[sl], noise[sl], t[sl])
            total[sl] += err.mean(dim=(1, 2, 3))
    return to_host(total / draws)


@torch.no_grad()
def loss_maps(
    unet: Any,
    scheduler: Any,
    latents: torch.Tensor,
    cond: torch.Tensor,
    gen: torch.Generator,
    batch_size: int = 256,
    reference: Callable[[], AbstractContextManager[Any]] | None = None,
) -> torch.Tensor:
    """One fresh (t, eps) draw per sample -> (N, C, h, w) squared-error maps: the MIA feature.

    ``reference``: while entered, ``unet`` computes the base model; the map is then the difference
    of the two models' errors on the same draw (the calibrated feature).
    """
    if reference is not None:
        adapted, base = loss_map_pair(unet, scheduler, latents, cond, gen, reference, batch_size)
        return adapted - base
    noise, t = _draw(scheduler, latents, gen)
    out = [
        squared_error_map(unet, scheduler, latents[sl], cond[sl], noise[sl], t[sl])
        for sl in _slices(len(latents), batch_size)
    ]
    return torch.cat(out) if out else latents.new_zeros((0, *latents.shape[1:]))


def loss_map_pair(
    unet: Any,
    scheduler: Any,
    latents: torch.Tensor,
    cond: torch.Tensor,
    gen: torch.Generator,
    reference: Callable[[], AbstractContextManager[Any]],
    batch_size: int = 256,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The adapted and the base model's (N, C, h, w) squared-error maps on the same fresh (t, eps) per sample
    (``reference`` entered: ``unet`` computes the base model)."""
    noise, t = _draw(scheduler, latents, gen)
    adapted, base = [], []
    for sl in _slices(len(latents), batch_size):
        adapted.append(squared_error_map(unet, scheduler, latents[sl], cond[sl], noise[sl], t[sl]))
        with reference():
            base.append(squared_error_map(unet, scheduler, latents[sl], cond[sl], noise[sl], t[sl]))
    if not adapted:
        empty = latents.new_zeros((0, *latents.shape[1:]))
        return empty, empty
    return torch.cat(adapted), torch.cat(base)


def _draw(scheduler: Any, latents: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    noise = torch.randn(latents.shape, generator=gen).to(latents.device)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (len(latents),), generator=gen).to(latents.device)
    return noise, t


def _slices(n: int, size: int) -> list[slice]:
    return [slice(i, i + size) for i in range(0, n, size)]
