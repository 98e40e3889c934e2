"""Where a process computes, and how: its torch device, mixed precision, and copies back to the host.

``simulation.device`` picks the device ("auto": CUDA when this process sees a GPU, as a Ray
worker does when ``simulation.num_gpus_per_client`` > 0); ``train.mixed_precision`` the autocast
dtype of the training forward pass. Every device-to-host copy of a computed tensor (a metric, a
score, an adapter state) goes through ``to_host``/``to_float``, so there is one place where the
device's values come back. The device-placement test runs the runtime on PyTorch's ``meta``
device (shapes, no values; a CPU tensor mixed in raises): its host copies are zeros. ``meta``
is for that test only and is not a config value.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from .errors import ConfigError

AUTO, CPU, CUDA, META = "auto", "cpu", "cuda", "meta"
NO_MIXED, FP16, BF16 = "no", "fp16", "bf16"
AUTOCAST_DTYPES = {FP16: torch.float16, BF16: torch.bfloat16}


def resolve_device(name: str) -> torch.device:
    """``simulation.device`` -> a torch device; "cuda" without a visible GPU is refused."""
    if name == AUTO:
        return torch.device(CUDA if torch.cuda.is_available() else CPU)
    if name == CUDA and not torch.cuda.is_available():
        raise ConfigError(
            "simulation.device = 'cuda' but this process sees no GPU (torch.cuda.is_available() is False); "
            "use 'auto' or 'cpu', or give Ray workers a GPU with simulation.num_gpus_per_client"
        )
    if name not in (CPU, CUDA, META):
        raise ConfigError(f"simulation.device = {name!r} is not allowed; choose one of {[AUTO, CPU, CUDA]}")
    return torch.device(name)


def to_host(t: torch.Tensor) -> torch.Tensor:
    """A detached CPU copy (a meta tensor, which holds no values, becomes zeros of its shape and dtype)."""
    if t.is_meta:
        return torch.zeros(t.shape, dtype=t.dtype)
    return t.detach().cpu()


def to_float(t: torch.Tensor) -> float:
    """A scalar tensor's value on the host (0.0 for a meta tensor)."""
    return float(to_host(t))


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """The forward pass under ``train.mixed_precision``; "no" leaves every op in float32."""
    if precision == NO_MIXED:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=AUTOCAST_DTYPES[precision]):
        yield


def grad_scaler(device: torch.device, precision: str) -> Any:
    """fp16 needs loss scaling (its exponent range underflows small gradients); bf16 and fp32 do not.

    Disabled, the scaler passes the loss and the step through unchanged.
    """
    return torch.amp.GradScaler(device.type if device.type != META else CPU, enabled=precision == FP16)
