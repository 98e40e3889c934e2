"""One process's model runtime: the base pipeline with its LoRA adapter and encoded samples.

A Ray worker serves many simulated clients; it loads the base pipeline once per (model, rank),
attaches the adapter once, and caches each client's encoded samples, so a round costs only
training (the cache is bounded by bytes, ``simulation.latent_cache_mb``). The server,
``fedlora evaluate`` and the loss tracker use the same runtime. It owns the device of the
pipeline and of every tensor it makes (``simulation.device``), and the dtype of those it makes
from arrays (float32). Adapter states cross its boundary as numpy arrays (what the rules and
Flower's records hold); inside it they are tensors on its device.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .byte_cache import ByteLRU
from .config import ExperimentConfig
from .data import ImageDataset, Splits, load_dataset, make_splits
from .device import resolve_device, to_host
from .errors import ConfigError
from .models.base import base_info, load_pipeline
from .models.diffusion import (
    SampleSet,
    encode_captions,
    encode_images,
    loss_maps,
    mean_denoising_loss,
    training_scheduler,
)
from .models.lora import LORA_B, BaseDeltas, ModelView, attach_lora, load_lora_state, lora_state

Arrays = dict[str, np.ndarray]


@dataclass
class EncodedSamples:
    ids: tuple[str, ...]
    latents: torch.Tensor
    cond: torch.Tensor

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def nbytes(self) -> int:
        return self.latents.nbytes + self.cond.nbytes


def check_base_matches_data(cfg: ExperimentConfig) -> None:
    """Refuse private splits that could overlap what the base model was pretrained on."""
    info = base_info(cfg.model.base_model)
    if not info or info.get("dataset") != cfg.data.dataset:
        return
    for key in ("public_fraction", "public_seed", "image_size"):
        if info.get(key) != getattr(cfg.data, key):
            raise ConfigError(
                f"data.{key} = {getattr(cfg.data, key)!r} but the base model was pretrained on the public split of "
                f"{info['dataset']} with {key} = {info.get(key)!r}; private members could then be in the base's "
                "training data. Use the base's value or another base model."
            )


class ModelRuntime:
    """Base pipeline + LoRA adapter + encoded samples, built once per process and config."""

    def __init__(
        self,
        cfg: ExperimentConfig,
        rank: int | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
    ):
        """``device`` overrides ``simulation.device`` (the placement test passes "meta")."""
        model = cfg.model if rank is None else dataclasses.replace(cfg.model, lora_rank=rank)
        self.device = resolve_device(cfg.simulation.device) if device is None else torch.device(device)
        self.dtype = dtype
        self.pipe = load_pipeline(model.base_model, cached=False)
        attach_lora(self.pipe.unet, model, seed=cfg.run.seed)
        if cfg.train.gradient_checkpointing:
            self.pipe.unet.enable_gradient_checkpointing()
        self.initial: Arrays = self.get_lora()  # the run seed's adapter, the same on every client and device
        self.pipe.to(self.device)  # the weights stay in the dtype they were saved in (float32)
        self.scheduler = training_scheduler(self.pipe)
        self.base = BaseDeltas(self.pipe.unet)
        self.scaling = model.lora_alpha / model.lora_rank
        self._encoded: ByteLRU[EncodedSamples] = ByteLRU(
            int(cfg.simulation.latent_cache_mb * 2**20), lambda e: e.nbytes
        )
        self._empty_caption: torch.Tensor | None = None
        self.current = ModelView()  # what the UNet computes now

    @property
    def unet(self) -> Any:
        return self.pipe.unet

    def encode(self, dataset: ImageDataset, ids: Sequence[str]) -> EncodedSamples:
        """The samples' latents and caption embeddings, on this runtime's device.

        Encoded once (on the device) and cached on the host: a GPU holds a client's samples only
        while the returned tensors are in use (its round), not those of every client it served.
        On the CPU the cache and the returned tensors are the same ones.
        """
        key = tuple(ids)

        def make() -> EncodedSamples:
            idx = dataset.indices_of(key)
            captions = [dataset.captions[i] for i in idx]
            return EncodedSamples(
                ids=key,
                latents=to_host(encode_images(self.pipe.vae, dataset.images[idx])),
                cond=to_host(encode_captions(self.pipe.tokenizer, self.pipe.text_encoder, captions)),
            )

        host = self._encoded.get_or_make(key, make)
        return EncodedSamples(ids=key, latents=host.latents.to(self.device), cond=host.cond.to(self.device))

    def tensors(self, arrays: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """numpy adapter state -> tensors on this runtime's device and dtype."""
        return {k: torch.as_tensor(np.asarray(v)).to(self.device, self.dtype) for k, v in arrays.items()}

    def set_lora(self, state: Mapping[str, np.ndarray]) -> None:
        self.show(ModelView(lora=state))

    def get_lora(self) -> Arrays:
        """The adapter as float32 numpy arrays (what rules, records and files hold)."""
        return {k: v.numpy() for k, v in lora_state(self.unet).items()}

    def show(self, view: ModelView) -> None:
        """Make the UNet compute ``view``'s model: base (+ dense deltas) + its LoRA (or B = 0)."""
        self.base.set(view.deltas)
        if view.lora is not None:
            load_lora_state(self.unet, self.tensors(view.lora))
        else:
            zero_b = {k: np.zeros_like(v) if LORA_B in k else v for k, v in self.initial.items()}
            load_lora_state(self.unet, self.tensors(zero_b))
        self.current = view

    @contextmanager
    def showing(self, view: ModelView) -> Iterator[None]:
        """``view`` while the block runs, then whatever was shown before (the LoRA as it was then)."""
        before = ModelView(lora=self.get_lora(), deltas=self.current.deltas)
        self.show(view)
        try:
            yield
        finally:
            self.show(before)

    @contextmanager
    def adapters_disabled(self) -> Iterator[None]:
        """The base model (with any merged base deltas) while the block runs: peft's adapter switch."""
        self.unet.disable_adapters()
        try:
            yield
        finally:
            self.unet.enable_adapters()

    def empty_caption(self, n: int) -> torch.Tensor:
        """The embedding of the empty caption, n times (classifier-free guidance's unconditional input)."""
        if self._empty_caption is None:
            self._empty_caption = encode_captions(self.pipe.tokenizer, self.pipe.text_encoder, [""])
        return self._empty_caption.expand(n, *self._empty_caption.shape[1:])

    def loss_maps(self, samples: SampleSet, gen: torch.Generator) -> torch.Tensor:
        return loss_maps(self.unet, self.scheduler, samples.latents, samples.cond, gen)

    def mean_loss(self, samples: SampleSet, draws: int, seed: int) -> torch.Tensor:
        self.unet.eval()
        return mean_denoising_loss(self.unet, self.scheduler, samples.latents, samples.cond, draws, seed)


_RUNTIMES: dict[tuple, ModelRuntime] = {}
_SPLITS: dict[tuple, Splits] = {}


def get_runtime(cfg: ExperimentConfig, rank: int | None = None) -> ModelRuntime:
    """The process's runtime for this model (and LoRA rank, default ``model.lora_rank``)."""
    rank = cfg.model.lora_rank if rank is None else rank
    m = cfg.model
    key = (
        m.base_model,
        rank,
        m.lora_alpha,
        m.lora_targets,
        m.lora_a_init,
        cfg.run.seed,
        cfg.simulation.device,
        cfg.train.gradient_checkpointing,
        cfg.simulation.latent_cache_mb,
    )
    if key not in _RUNTIMES:
        _RUNTIMES[key] = ModelRuntime(cfg, rank)
    return _RUNTIMES[key]


def get_splits(cfg: ExperimentConfig) -> Splits:
    """The run's splits, made once per process (every client and the server derive the same ones)."""
    key = (cfg.data, cfg.federation.num_clients, cfg.run.seed)
    if key not in _SPLITS:
        _SPLITS[key] = make_splits(load_dataset(cfg.data), cfg.data, cfg.federation.num_clients, cfg.run.seed)
    return _SPLITS[key]
