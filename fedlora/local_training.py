"""One process's model runtime and a client's local LoRA round.

A Ray worker serves many simulated clients; it loads the base pipeline once, attaches the
adapter once, and caches each client's encoded samples, so a round costs only training.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import torch

from .config import ConfigError, ExperimentConfig, TrainConfig
from .data import ImageDataset, Splits, load_dataset, make_splits
from .models.base import base_info, load_pipeline
from .models.diffusion import (
    encode_captions,
    encode_images,
    loss_maps,
    mean_denoising_loss,
    squared_error_map,
    training_scheduler,
)
from .models.lora import LORA_B, BaseDeltas, ModelView, attach_lora, init_lora, load_lora_state, lora_state, set_trainable
from .privacy.attacker import membership_labels
from .privacy.objectives import AttackBatchFn, Objective, build_objective
from .rules import client_keep, client_rank, client_setup, client_upload, traits


def round_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from (run seed, client, round, ...)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint64)[0] >> 1)


@dataclass
class EncodedSamples:
    ids: tuple[str, ...]
    latents: torch.Tensor
    cond: torch.Tensor

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class TrainStats:
    num_examples: int
    steps: int
    loss_first: float
    loss_last: float
    loss_mean: float
    seconds: float
    extra: dict[str, float] = field(default_factory=dict)


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

    def __init__(self, cfg: ExperimentConfig, rank: int | None = None):
        model = cfg.model if rank is None else dataclasses.replace(cfg.model, lora_rank=rank)
        self.pipe = load_pipeline(model.base_model, cached=False)
        attach_lora(self.pipe.unet, model, seed=cfg.run.seed)
        self.scheduler = training_scheduler(self.pipe)
        self.base = BaseDeltas(self.pipe.unet)
        self.initial = lora_state(self.pipe.unet)  # the run seed's adapter, the same on every client
        self.scaling = model.lora_alpha / model.lora_rank
        self._encoded: dict[tuple[str, ...], EncodedSamples] = {}

    @property
    def unet(self):
        return self.pipe.unet

    def encode(self, dataset: ImageDataset, ids: Sequence[str]) -> EncodedSamples:
        key = tuple(ids)
        if key not in self._encoded:
            idx = dataset.indices_of(key)
            self._encoded[key] = EncodedSamples(
                ids=key,
                latents=encode_images(self.pipe.vae, dataset.images[idx]),
                cond=encode_captions(self.pipe.tokenizer, self.pipe.text_encoder, [dataset.captions[i] for i in idx]),
            )
        return self._encoded[key]

    def set_lora(self, state: Mapping[str, torch.Tensor]) -> None:
        self.show(ModelView(lora=state))

    def show(self, view: ModelView) -> None:
        """Make the UNet compute ``view``'s model: base (+ dense deltas) + its LoRA (or B = 0)."""
        self.base.set(view.deltas)
        if view.lora is not None:
            load_lora_state(self.unet, {k: torch.as_tensor(np.asarray(v)) for k, v in view.lora.items()})
        else:
            load_lora_state(self.unet, {k: torch.zeros_like(v) if LORA_B in k else v for k, v in self.initial.items()})

    def get_lora(self) -> dict[str, torch.Tensor]:
        return lora_state(self.unet)

    def loss_maps(self, samples: EncodedSamples, gen: torch.Generator) -> torch.Tensor:
        return loss_maps(self.unet, self.scheduler, samples.latents, samples.cond, gen)

    def mean_loss(self, samples: EncodedSamples, draws: int, seed: int) -> torch.Tensor:
        self.unet.eval()
        return mean_denoising_loss(self.unet, self.scheduler, samples.latents, samples.cond, draws, seed)


_RUNTIMES: dict[tuple, ModelRuntime] = {}
_SPLITS: dict[tuple, Splits] = {}


def get_runtime(cfg: ExperimentConfig, rank: int | None = None) -> ModelRuntime:
    """The process's runtime for this model (and LoRA rank, default ``model.lora_rank``)."""
    rank = cfg.model.lora_rank if rank is None else rank
    m = cfg.model
    key = (m.base_model, rank, m.lora_alpha, m.lora_targets, m.lora_a_init, cfg.run.seed)
    if key not in _RUNTIMES:
        _RUNTIMES[key] = ModelRuntime(cfg, rank)
    return _RUNTIMES[key]


def get_splits(cfg: ExperimentConfig) -> Splits:
    key = (cfg.data, cfg.federation.num_clients, cfg.run.seed)
    if key not in _SPLITS:
        _SPLITS[key] = make_splits(load_dataset(cfg.data), cfg.data, cfg.federation.num_clients, cfg.run.seed)
    return _SPLITS[key]


def scale_b_gradient_rows(unet, norm: float) -> None:
    """Implicit DP (arXiv 2409.17538): every row of each B gradient rescaled to ``norm``.

    With A frozen at N(0, 1/r), a B-gradient row gᵢAᵀ has the norm of the full-gradient row gᵢ in
    expectation (Johnson–Lindenstrauss); fixing it makes the projection noise's scale fixed.
    """
    for name, param in unet.named_parameters():
        if LORA_B in name and param.grad is not None:
            rows = param.grad.reshape(param.grad.shape[0], -1)
            rows.mul_(norm / rows.norm(dim=1, keepdim=True).clamp_min(1e-12))


def train_lora(
    runtime: ModelRuntime, samples: EncodedSamples, train: TrainConfig, objective: Objective, seed: int,
    b_row_norm: float | None = None,
) -> TrainStats:
    """``train.local_steps`` AdamW steps on the trainable LoRA factors; batches cycle through shuffled members.

    ``b_row_norm`` switches to implicit-DP gradient scaling (instead of global-norm clipping).
    """
    started = time.perf_counter()
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
        noise = torch.randn(z.shape, generator=gen)
        t = torch.randint(0, runtime.scheduler.config.num_train_timesteps, (len(idx),), generator=gen)
        err = squared_error_map(unet, runtime.scheduler, z, c, noise, t)
        loss, metrics = objective.loss(err)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if b_row_norm is not None:
            scale_b_gradient_rows(unet, b_row_norm)
        elif train.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, train.max_grad_norm)
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


def aux_batches(runtime: ModelRuntime, members: EncodedSamples, nonmembers: EncodedSamples, gen: torch.Generator) -> AttackBatchFn:
    """Balanced proxy-attacker batches: k random D^m_aux and k random D^nm_aux loss maps (no grad)."""

    def batch(k: int) -> tuple[torch.Tensor, torch.Tensor]:
        mi = torch.randint(0, len(members), (k,), generator=gen)
        ni = torch.randint(0, len(nonmembers), (k,), generator=gen)
        latents = torch.cat([members.latents[mi], nonmembers.latents[ni]])
        cond = torch.cat([members.cond[mi], nonmembers.cond[ni]])
        return loss_maps(runtime.unet, runtime.scheduler, latents, cond, gen), membership_labels(k, k)

    return batch


@dataclass
class ClientRoundResult:
    state: dict[str, torch.Tensor]  # the trained adapter (this client's rank)
    stats: TrainStats
    objective_state: dict[str, torch.Tensor]
    upload: dict[str, torch.Tensor] = field(default_factory=dict)  # what the rule sends to the server
    kept: dict[str, torch.Tensor] = field(default_factory=dict)  # what the rule keeps on the client
    eval_only: dict[str, torch.Tensor] = field(default_factory=dict)  # for the audit, never aggregated
    dp_state: dict[str, torch.Tensor] = field(default_factory=dict)


def _numpy(state: Mapping[str, torch.Tensor | np.ndarray] | None) -> dict[str, np.ndarray]:
    return {k: np.asarray(v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v) for k, v in (state or {}).items()}


def _torch(state: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in state.items()}


def client_round(
    cfg: ExperimentConfig,
    client_id: int,
    payload: Mapping[str, torch.Tensor],
    server_round: int,
    objective_state: Mapping[str, torch.Tensor] | None = None,
    kept: Mapping[str, torch.Tensor] | None = None,
    dp_state: Mapping[str, torch.Tensor] | None = None,
) -> ClientRoundResult:
    """One client's round with torch's global generator seeded from (run seed, client, round).

    The proxy attacker's dropout draws from that generator; unseeded, its masks depended on
    whatever the Ray worker had run before, so MP-/SMP-LoRA numbers changed from run to run.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(round_seed(cfg.run.seed, client_id, server_round, 5))
        return _client_round(cfg, client_id, payload, server_round, objective_state, kept, dp_state)


def _client_round(
    cfg: ExperimentConfig,
    client_id: int,
    payload: Mapping[str, torch.Tensor],
    server_round: int,
    objective_state: Mapping[str, torch.Tensor] | None = None,
    kept: Mapping[str, torch.Tensor] | None = None,
    dp_state: Mapping[str, torch.Tensor] | None = None,
) -> ClientRoundResult:
    """Build the adapter from what the server sent (``payload``) and what this client kept, train
    on its members, and return what the aggregation rule uploads and keeps.

    With MP-/SMP-LoRA the client's proxy attacker continues from ``objective_state`` (its
    previous round) and is scored afterwards on the client's own D_te (one (t, eps) draw).
    """
    if not 0 <= client_id < cfg.federation.num_clients:
        raise ValueError(f"client id {client_id} is outside 0..{cfg.federation.num_clients - 1} (federation.num_clients)")
    rule = traits(cfg.federation.aggregation)
    runtime = get_runtime(cfg, client_rank(cfg, client_id))
    split = get_splits(cfg).clients[client_id]
    dataset = load_dataset(cfg.data)
    members = runtime.encode(dataset, split.members)
    seed = round_seed(cfg.run.seed, client_id, server_round)
    gen = torch.Generator().manual_seed(round_seed(seed, 1))
    private = cfg.train.method != "lora"
    attack_batch = None
    if private:
        attack_batch = aux_batches(
            runtime, runtime.encode(dataset, split.member_aux), runtime.encode(dataset, split.nonmember_aux), gen
        )
    objective = build_objective(
        cfg.train,
        cfg.privacy,
        feature_size=members.latents[0].numel(),
        attack_batch=attack_batch,
        seed=round_seed(cfg.run.seed, client_id),
    )
    if objective_state:
        objective.load_state_dict(dict(objective_state))
    if rule.fresh_lora:  # FLoRA: a new adapter every round on top of the merged base
        init_lora(runtime.unet, round_seed(cfg.run.seed, client_id, server_round, 3), cfg.model.lora_a_init)
        init = _numpy(lora_state(runtime.unet))
    else:
        init = _numpy(runtime.initial)
    setup = client_setup(cfg, client_id, _numpy(payload), _numpy(kept), init)
    runtime.base.set(setup.base_deltas)
    load_lora_state(runtime.unet, _torch(setup.adapter))
    implicit = cfg.privacy.dp == "implicit-dp"
    set_trainable(runtime.unet, train_a=rule.train_a and not implicit)
    dp_out: dict[str, torch.Tensor] = {}
    try:
        if cfg.privacy.dp == "dp-lora":
            stats, dp_out = train_lora_local_dp(runtime, members, cfg, seed, dp_state)
        else:
            stats = train_lora(runtime, members, cfg.train, objective, seed,
                               b_row_norm=cfg.privacy.dp_max_grad_norm if implicit else None)
    finally:
        set_trainable(runtime.unet, train_a=True)
    if private:
        test_m = runtime.encode(dataset, split.member_test)
        test_n = runtime.encode(dataset, split.nonmember_test)
        maps = torch.cat([runtime.loss_maps(test_m, gen), runtime.loss_maps(test_n, gen)])
        attacker = objective.attacker  # type: ignore[attr-defined]
        stats.extra["attacker_test_acc"] = attacker.accuracy(maps, membership_labels(len(test_m), len(test_n)))
        stats.extra["attacker_updates"] = float(attacker.updates)
    trained = runtime.get_lora()
    trained_np = _numpy(trained)
    kept = client_keep(cfg, trained_np, setup)
    eval_only = _torch(kept) if rule.keeps_b else {}  # FedSA: the B it keeps, shown to the audit only
    return ClientRoundResult(
        state=trained,
        stats=stats,
        objective_state=objective.state_dict(),
        upload=_torch(client_upload(cfg, trained_np)),
        kept={k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in kept.items()},
        eval_only=eval_only,
        dp_state=dp_out,
    )


DP_HISTORY = "rdp-history"


def train_lora_local_dp(
    runtime: ModelRuntime, members: EncodedSamples, cfg: ExperimentConfig, seed: int,
    dp_state: Mapping[str, torch.Tensor] | None,
) -> tuple[TrainStats, dict[str, torch.Tensor]]:
    """dp-lora: Opacus DP-SGD on the LoRA factors; the client's RDP history continues across rounds."""
    from .privacy.dp_sgd import DpSgdSettings, history_from_array, history_to_array, train_lora_dp

    p = cfg.privacy
    history = history_from_array(dp_state[DP_HISTORY].numpy()) if dp_state and DP_HISTORY in dp_state else None
    res = train_lora_dp(
        runtime.unet, runtime.scheduler, members.latents, members.cond,
        steps=cfg.train.local_steps, batch_size=cfg.train.batch_size, learning_rate=cfg.train.learning_rate,
        settings=DpSgdSettings(p.dp_noise_multiplier, p.dp_max_grad_norm, p.dp_delta), seed=seed,
        accountant_history=history,
    )
    losses = [x for x in res.losses if np.isfinite(x)] or [float("nan")]
    stats = TrainStats(
        num_examples=len(members), steps=res.steps, loss_first=losses[0], loss_last=losses[-1],
        loss_mean=float(np.mean(losses)), seconds=res.seconds,
        extra={"dp_epsilon": res.epsilon, "dp_sample_rate": res.sample_rate, "dp_mean_batch": float(np.mean(res.batch_sizes))},
    )
    return stats, {DP_HISTORY: torch.from_numpy(history_to_array(res.accountant_history))}
