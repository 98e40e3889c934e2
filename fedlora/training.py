"""The LoRA training loop a client runs in its round: AdamW steps on the trainable factors.

Every tensor lives on the runtime's device. The (t, ε) draws and the batch order come from a
CPU generator and are copied there, so a seed gives the same draws on any device. Under
``train.mixed_precision`` the forward pass and the loss run in autocast; the LoRA factors, their
gradients and the optimiser's moments stay float32.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .config import TrainConfig
from .device import autocast, grad_scaler, to_float
from .models.diffusion import SampleSet, noise_residual, squared_error_map
from .privacy.objectives import Objective, StepBatch
from .runtime import ModelRuntime

# (unet, trainable parameters) -> None, between backward and the optimiser step
GradientHook = Callable[[Any, list[torch.nn.Parameter]], None]


@dataclass
class TrainStats:
    num_examples: int
    steps: int
    loss_first: float
    loss_last: float
    loss_mean: float
    seconds: float
    extra: dict[str, float] = field(default_factory=dict)


def clip_by_global_norm(max_norm: float) -> GradientHook:
    """``train.max_grad_norm``: the usual global-norm clipping (0 turns it off)."""

    def hook(unet: Any, params: list[torch.nn.Parameter]) -> None:
        if max_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, max_norm)

    return hook


def _step_batch(
    runtime: ModelRuntime,
    z: torch.Tensor,
    c: torch.Tensor,
    noise: torch.Tensor,
    t: torch.Tensor,
    gen: torch.Generator,
    index: torch.Tensor,
    residual: torch.Tensor,
) -> StepBatch:
    """The objective's extra draws run inside the step's autocast (the trainer calls ``loss`` there)."""

    def redraw() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n = torch.randn(z.shape, generator=gen).to(runtime.device)
        tt = torch.randint(0, runtime.scheduler.config.num_train_timesteps, (len(z),), generator=gen).to(runtime.device)
        return squared_error_map(runtime.unet, runtime.scheduler, z, c, n, tt), n, tt

    def base_residual(n: torch.Tensor, tt: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), runtime.adapters_disabled():
            return noise_residual(runtime.unet, runtime.scheduler, z, c, n, tt)

    return StepBatch(noise, t, redraw, lambda n, tt: base_residual(n, tt).pow(2), index, residual, base_residual)


def train_lora(
    runtime: ModelRuntime,
    samples: SampleSet,
    train: TrainConfig,
    objective: Objective,
    seed: int,
    gradient_hook: GradientHook | None = None,
) -> TrainStats:
    """``train.local_steps`` AdamW steps on the trainable LoRA factors; batches cycle through shuffled members.

    ``gradient_hook`` replaces global-norm clipping (implicit DP rescales B-gradient rows instead).
    """
    started = time.perf_counter()
    hook = gradient_hook or clip_by_global_norm(train.max_grad_norm)
    unet = runtime.unet
    params = [p for p in unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=train.learning_rate)
    scaler = grad_scaler(runtime.device, train.mixed_precision)
    gen = torch.Generator().manual_seed(seed)
    n = len(samples)
    order = torch.randperm(n, generator=gen)
    cursor = 0
    losses: list[float] = []
    extra: dict[str, list[float]] = {}
    unet.train()
    for _ in range(train.local_steps):
        if cursor + train.batch_size > n:
            order, cursor = torch.randperm(n, generator=gen), 0
        idx = order[cursor : cursor + min(train.batch_size, n)]
        cursor += len(idx)
        z, c = samples.latents[idx.to(samples.latents.device)], samples.cond[idx.to(samples.cond.device)]
        noise = torch.randn(z.shape, generator=gen).to(runtime.device)
        t = torch.randint(0, runtime.scheduler.config.num_train_timesteps, (len(idx),), generator=gen).to(
            runtime.device
        )
        with autocast(runtime.device, train.mixed_precision):
            residual = noise_residual(unet, runtime.scheduler, z, c, noise, t)
            err = residual.pow(2)
            loss, metrics = objective.loss(err, _step_batch(runtime, z, c, noise, t, gen, idx, residual))
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)  # the hook clips true gradients, not scaled ones
        hook(unet, params)
        scaler.step(opt)  # skipped when fp16 gradients overflowed
        scaler.update()
        metrics.update(objective.after_step())
        losses.append(to_float(loss.detach()))
        for k, v in metrics.items():
            extra.setdefault(k, []).append(v)
    unet.eval()
    return TrainStats(
        num_examples=n,
        steps=train.local_steps,
        loss_first=losses[0],
        loss_last=losses[-1],
        loss_mean=float(np.mean(losses)),
        seconds=time.perf_counter() - started,
        extra={k: float(np.mean(v)) for k, v in extra.items()},
    )
