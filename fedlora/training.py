"""The LoRA training loop a client runs in its round: AdamW steps on the trainable factors."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .config import TrainConfig
from .models.diffusion import SampleSet, squared_error_map
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
) -> StepBatch:
    def redraw() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n = torch.randn(z.shape, generator=gen).to(runtime.device)
        tt = torch.randint(0, runtime.scheduler.config.num_train_timesteps, (len(z),), generator=gen).to(runtime.device)
        return squared_error_map(runtime.unet, runtime.scheduler, z, c, n, tt), n, tt

    def base_error(n: torch.Tensor, tt: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), runtime.adapters_disabled():
            return squared_error_map(runtime.unet, runtime.scheduler, z, c, n, tt)

    return StepBatch(noise, t, redraw, base_error)


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
        z, c = samples.latents[idx], samples.cond[idx]
        noise = torch.randn(z.shape, generator=gen).to(runtime.device)
        t = torch.randint(0, runtime.scheduler.config.num_train_timesteps, (len(idx),), generator=gen).to(
            runtime.device
        )
        err = squared_error_map(unet, runtime.scheduler, z, c, noise, t)
        loss, metrics = objective.loss(err, _step_batch(runtime, z, c, noise, t, gen))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        hook(unet, params)
        opt.step()
        metrics.update(objective.after_step())
        losses.append(float(loss.detach()))
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
