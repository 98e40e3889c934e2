"""LoRA on the UNet via peft, and the A/B tensors that travel between clients and server."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import ModelConfig
from ..device import to_host

LORA_A, LORA_B = "lora_A", "lora_B"
ADAPTER_WEIGHTS = "pytorch_lora_weights.safetensors"


def lora_config(model: ModelConfig) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=model.lora_rank,
        lora_alpha=model.lora_alpha,  # type: ignore[arg-type]  # peft annotates int, scales by any number
        target_modules=list(model.lora_targets),
        init_lora_weights=True,  # A ~ Kaiming-uniform, B = 0: the adapter starts as a no-op
    )


def attach_lora(unet: Any, model: ModelConfig, seed: int = 0) -> None:
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
    if model.lora_a_init != "kaiming-uniform":
        init_lora(unet, seed, model.lora_a_init)


def lora_layers(unet: Any) -> Iterator[tuple[str, Any]]:
    """(prefix, peft LoRA layer); the prefix is the state-dict key without ``.lora_A.weight``."""
    from peft.tuners.lora import LoraLayer

    for name, module in unet.named_modules():
        if isinstance(module, LoraLayer):
            yield name, module


def init_lora(unet: Any, seed: int, a_init: str = "kaiming-uniform") -> None:
    """A fresh adapter: B = 0 and A re-drawn from ``seed`` (FLoRA restarts one every round).

    ``gaussian`` draws A with i.i.d. N(0, 1/r) entries, the matrix arXiv 2409.17538 analyses
    (E[AᵀA] = I); ``kaiming-uniform`` is peft's default.
    """
    if a_init not in ("kaiming-uniform", "gaussian"):
        raise ValueError(f"model.lora_a_init = {a_init!r}; choose 'kaiming-uniform' or 'gaussian'")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in lora_layers(unet):
            for name in layer.lora_A:
                a, b = layer.lora_A[name].weight, layer.lora_B[name].weight
                if a_init == "gaussian":
                    a.copy_(torch.randn(a.shape, generator=gen) / math.sqrt(a.shape[0]))
                else:  # torch's Kaiming-uniform with a = sqrt(5), as nn.Linear and peft use
                    bound = 1.0 / math.sqrt(a[0].numel())
                    a.copy_((torch.rand(a.shape, generator=gen) * 2 - 1) * bound)
                b.zero_()


def set_trainable(unet: Any, train_a: bool, train_b: bool = True) -> None:
    """Which LoRA factors the optimiser sees (FFA-LoRA and implicit DP freeze A)."""
    for name, param in unet.named_parameters():
        if LORA_A in name:
            param.requires_grad_(train_a)
        elif LORA_B in name:
            param.requires_grad_(train_b)


class BaseDeltas:
    """Dense updates merged into the frozen base weights (FLoRA's merges, exact global models).

    Keeps the original weights so that any set of deltas can be applied or removed exactly.
    """

    def __init__(self, unet: Any):
        self.layers = dict(lora_layers(unet))
        self.original = {p: layer.base_layer.weight.detach().clone() for p, layer in self.layers.items()}
        self.applied: set[str] = set()

    def set(self, deltas: Mapping[str, np.ndarray | torch.Tensor] | None) -> None:
        deltas = deltas or {}
        unknown = sorted(set(deltas) - set(self.layers))
        if unknown:
            raise ValueError(f"base deltas for modules without a LoRA layer: {unknown[:3]}")
        with torch.no_grad():
            for prefix in self.applied - set(deltas):
                self.layers[prefix].base_layer.weight.copy_(self.original[prefix])
            for prefix, delta in deltas.items():
                weight = self.layers[prefix].base_layer.weight
                d = torch.as_tensor(np.asarray(delta), dtype=torch.float64).reshape(weight.shape).to(weight.device)
                weight.copy_((self.original[prefix].double() + d).to(weight.dtype))
        self.applied = set(deltas)


@dataclass(frozen=True)
class ModelView:
    """A fine-tuned model as some party sees it: base + dense ``deltas`` + a LoRA ``lora``.

    ``lora`` is an adapter state at the evaluating runtime's rank (None: B = 0). ``deltas`` maps a
    module prefix to a dense (d_out, d_in·kh·kw) update added to the base weight: how rules whose
    global model is no rank-r LoRA (FLoRA's merges, FlexLoRA's exact mean) are evaluated exactly.
    """

    lora: Mapping[str, np.ndarray] | None = None
    deltas: Mapping[str, np.ndarray] | None = None


def lora_state(unet: Any) -> dict[str, torch.Tensor]:
    """Only the adapter tensors, fp32 on CPU (Flower's ArrayRecord cannot carry bf16)."""
    from peft import get_peft_model_state_dict

    return {k: to_host(v).float().clone() for k, v in get_peft_model_state_dict(unet).items()}


def load_lora_state(unet: Any, state: Mapping[str, torch.Tensor]) -> None:
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


def get_keys(unet: Any) -> list[str]:
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


_LORA, _DELTA = "lora/", "delta/"


def save_view(path: str | Path, view: ModelView) -> Path:
    """A ModelView as one safetensors file (``lora/<key>``, ``delta/<module>``), float32."""
    from safetensors.torch import save_file

    tensors = {
        _LORA + k: torch.as_tensor(np.asarray(v), dtype=torch.float32).contiguous()
        for k, v in (view.lora or {}).items()
    }
    tensors |= {
        _DELTA + k: torch.as_tensor(np.asarray(v), dtype=torch.float32).contiguous()
        for k, v in (view.deltas or {}).items()
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"has_lora": str(view.lora is not None)})
    return path


def load_view(path: str | Path) -> ModelView:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (runs written before views/ existed cannot be re-evaluated)")
    with safe_open(str(path), framework="pt") as fh:
        keys = list(fh.keys())
        has_lora = (fh.metadata() or {}).get("has_lora") == "True"
        lora = {k[len(_LORA) :]: fh.get_tensor(k).numpy() for k in keys if k.startswith(_LORA)}
        deltas = {k[len(_DELTA) :]: fh.get_tensor(k).double().numpy() for k in keys if k.startswith(_DELTA)}
    return ModelView(lora=lora if has_lora else None, deltas=deltas or None)
