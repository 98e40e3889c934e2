"""Sample-level DP-SGD on the UNet's LoRA parameters (Opacus hooks, Poisson sampling, RDP).

Opacus attaches per-sample-gradient hooks to the caller's UNet without wrapping it
(the equivalent of ``make_private(..., wrap_model=False)``), so the runtime's UNet, its
peft adapter and ``lora_state`` keep working; everything Opacus adds is removed afterwards.
The privacy unit is one training sample of this client; the RDP history is returned so a
client's epsilon keeps accumulating across federated rounds.
"""

from __future__ import annotations

import functools
import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..models.diffusion import squared_error_map

PerSampleLoss = Callable[[torch.Tensor], torch.Tensor]  # (B, C, h, w) error map -> (B,)
HistoryEvent = tuple[float, float, int]  # Opacus RDPAccountant.history: (noise_multiplier, sample_rate, steps)


@dataclass(frozen=True)
class DpSgdSettings:
    noise_multiplier: float
    max_grad_norm: float
    delta: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier > 0):
            raise ValueError(
                f"privacy.dp_noise_multiplier = {self.noise_multiplier!r} must be a finite number > 0 "
                "(DP-SGD without noise gives no privacy guarantee)"
            )
        if not (math.isfinite(self.max_grad_norm) and self.max_grad_norm > 0):
            raise ValueError(f"privacy.dp_max_grad_norm = {self.max_grad_norm!r} must be a finite number > 0")
        if not 0 < self.delta < 1:
            raise ValueError(f"privacy.dp_delta = {self.delta!r} must lie in (0, 1)")


@dataclass
class DpSgdResult:
    losses: list[float]  # mean per-sample loss of each step's Poisson batch; nan for an empty batch
    epsilon: float  # cumulative over accountant_history, at delta
    delta: float
    accountant_history: list[HistoryEvent]
    sample_rate: float
    steps: int
    seconds: float
    batch_sizes: list[int]


def default_per_sample_loss(err: torch.Tensor) -> torch.Tensor:
    return err.mean(dim=(1, 2, 3))


def history_to_array(history: Sequence[HistoryEvent]) -> np.ndarray:
    """(k, 3) float64, so the accountant state fits a Flower ArrayRecord."""
    arr = np.asarray([[float(s), float(q), float(n)] for s, q, n in history], dtype=np.float64)
    return arr.reshape(len(history), 3)


def history_from_array(arr: Any) -> list[HistoryEvent]:
    a = np.asarray(arr, dtype=np.float64)
    if a.size == 0:
        return []
    if a.ndim != 2 or a.shape[1] != 3:
        raise ValueError(f"DP accountant history must have shape (k, 3), got {a.shape}")
    history: list[HistoryEvent] = []
    for sigma, q, steps in a.tolist():
        if not (sigma > 0 and 0 < q <= 1 and steps >= 0 and float(steps).is_integer()):
            raise ValueError(f"invalid DP accountant event (noise_multiplier, sample_rate, steps): {(sigma, q, steps)}")
        history.append((float(sigma), float(q), int(steps)))
    return history


def _accountant(history: Sequence[HistoryEvent] | None):
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    acc.history = [(float(s), float(q), int(n)) for s, q, n in (history or [])]
    return acc


def epsilon_for(history: Sequence[HistoryEvent], delta: float) -> float:
    """Opacus' RDP epsilon (default orders) of a composed history; 0 for an empty one."""
    if not 0 < delta < 1:
        raise ValueError(f"privacy.dp_delta = {delta!r} must lie in (0, 1)")
    return float(_accountant(history).get_epsilon(delta=delta))


def _cleanup(unet: Any, hooks: Any, params: list[torch.nn.Parameter]) -> None:
    """Leave the caller's UNet a plain module again: no hooks, no Opacus attributes, no noisy grads."""
    if hooks is not None:
        hooks.cleanup()
    for p in params:
        for attr in ("summed_grad", "grad_sample", "_forward_counter", "_current_grad_sample"):
            if hasattr(p, attr):
                delattr(p, attr)
        p.grad = None
    for m in unet.modules():
        for attr in ("activations", "max_batch_len"):
            if attr in m.__dict__:
                delattr(m, attr)


@functools.cache
def _hooks_class():
    """Opacus' hooks with a conv grad sampler that first makes activations NCHW-contiguous.

    Opacus 1.6's ``unfold2d`` builds its patches with ``as_strided`` and hard-coded H/W
    strides, so a channels_last activation gives silently wrong per-sample gradients (zeros
    for a 3x3 LoRA A). The VAE's cached latents are channels_last and so are the first
    resnet's activations; ``tests/test_dp_sgd.py`` checks this against autograd.
    """
    from opacus.grad_sample.grad_sample_module import GradSampleHooks

    conv_sampler = GradSampleHooks.GRAD_SAMPLERS[torch.nn.Conv2d]

    def contiguous_conv_sampler(layer: Any, activations: Any, backprops: Any):
        return conv_sampler(layer, [a.contiguous() for a in activations], backprops.contiguous())

    class Hooks(GradSampleHooks):
        GRAD_SAMPLERS = {**GradSampleHooks.GRAD_SAMPLERS, torch.nn.Conv2d: contiguous_conv_sampler}

    return Hooks


@contextmanager
def per_sample_grad_hooks(unet: Any) -> Iterator[list[torch.nn.Parameter]]:
    """Opacus hooks on the trainable parameters, removed on exit (also on error).

    ``loss_reduction="sum"``: backpropagate the *sum* of per-sample losses and each
    ``p.grad_sample[i]`` is sample i's own gradient, whatever the realised batch size.
    """
    params = [p for p in unet.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the UNet has no trainable parameters; attach LoRA first")
    hooks = None
    try:
        hooks = _hooks_class()(unet, batch_first=True, loss_reduction="sum", strict=True)
        hooks.forbid_grad_accumulation()  # Poisson batches: exactly one backward per step
        yield params
    finally:
        _cleanup(unet, hooks, params)


def train_lora_dp(
    unet: Any,
    scheduler: Any,
    latents: torch.Tensor,
    cond: torch.Tensor,
    *,
    steps: int,
    batch_size: int,
    learning_rate: float,
    settings: DpSgdSettings,
    seed: int,
    per_sample_loss: PerSampleLoss | None = None,
    accountant_history: Sequence[HistoryEvent] | None = None,
) -> DpSgdResult:
    """``steps`` DP-AdamW steps on the trainable (LoRA) parameters with Poisson rate batch_size / n.

    Each step backpropagates the *sum* of per-sample losses (Opacus hooks with
    ``loss_reduction="sum"`` then store each sample's own gradient), clips each to
    ``max_grad_norm``, adds N(0, (sigma C)^2) and divides by the expected batch size: the
    mean-loss DP-SGD estimator, independent of the realised batch size. An empty batch is
    a noise-only step and is accounted like any other. ``per_sample_loss`` must keep samples
    apart (entry i may depend only on ``err[i]``), or the clipping bound means nothing.
    """
    from opacus.optimizers import DPOptimizer

    started = time.perf_counter()
    n = len(latents)
    if len(cond) != n:
        raise ValueError(f"latents ({n}) and cond ({len(cond)}) must hold the same samples")
    if not 0 < batch_size <= n:
        raise ValueError(f"train.batch_size = {batch_size} must be in 1..{n} (the client's number of samples)")
    if steps < 0:
        raise ValueError(f"steps = {steps} must be >= 0")
    loss_fn = per_sample_loss or default_per_sample_loss
    sample_rate = batch_size / n
    num_t = scheduler.config.num_train_timesteps
    accountant = _accountant(accountant_history)
    gen = torch.Generator().manual_seed(seed)  # batches and (t, eps) draws on CPU, like train_lora
    noise_seed = int(torch.randint(0, 2**62, (1,), generator=gen))
    losses: list[float] = []
    batch_sizes: list[int] = []
    try:
        with per_sample_grad_hooks(unet) as params:
            device = params[0].device
            optimizer = DPOptimizer(
                torch.optim.AdamW(params, lr=learning_rate),
                noise_multiplier=settings.noise_multiplier,
                max_grad_norm=settings.max_grad_norm,
                expected_batch_size=batch_size,
                loss_reduction="mean",
                generator=torch.Generator(device=device).manual_seed(noise_seed),  # reproducible, not secure_mode
            )
            optimizer.attach_step_hook(accountant.get_optimizer_hook_fn(sample_rate=sample_rate))
            unet.train()
            for _ in range(steps):
                idx = torch.nonzero(torch.rand(n, generator=gen) < sample_rate).flatten()
                optimizer.zero_grad(set_to_none=True)
                b = len(idx)
                batch_sizes.append(b)
                if b == 0:  # what Opacus' empty-batch collate leads to: zero clipped sum, noise only
                    for p in params:
                        p.grad_sample = p.new_zeros((0, *p.shape))  # type: ignore[attr-defined]  # Opacus's
                    losses.append(float("nan"))
                else:
                    z, c = latents[idx].to(device), cond[idx].to(device)
                    noise = torch.randn(z.shape, generator=gen).to(device)
                    t = torch.randint(0, num_t, (b,), generator=gen).to(device)
                    per_sample = loss_fn(squared_error_map(unet, scheduler, z, c, noise, t))
                    if per_sample.shape != (b,):
                        raise ValueError(
                            f"per_sample_loss must return one loss per sample, shape ({b},); "
                            f"got {tuple(per_sample.shape)}"
                        )
                    with warnings.catch_warnings():
                        # expected: the first LoRA layers see inputs that need no grad
                        warnings.filterwarnings("ignore", message="Full backward hook is firing")
                        per_sample.sum().backward()
                    losses.append(float(per_sample.detach().mean()))
                optimizer.step()
    finally:
        unet.eval()
    history = list(accountant.history)
    return DpSgdResult(
        losses=losses,
        epsilon=epsilon_for(history, settings.delta),
        delta=settings.delta,
        accountant_history=history,
        sample_rate=sample_rate,
        steps=steps,
        seconds=time.perf_counter() - started,
        batch_sizes=batch_sizes,
    )
