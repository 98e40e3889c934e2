"""A client's local round: build the adapter its rule prescribes, train it, and say what goes up.

The rule (``federation.aggregation``), the objective (``train.method``) and the DP mode
(``privacy.dp``) each come from their registry; this module only strings them together.
Adapter states are numpy arrays throughout (the Flower boundary converts them once).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from .config import ExperimentConfig, PrivacyConfig
from .data import SiloData, load_dataset
from .device import NO_MIXED, autocast
from .evaluation.attacks.base import AttackSets, Samples
from .evaluation.membership import attack_sets
from .models.diffusion import SampleSet, loss_map_pair, loss_maps
from .models.lora import ModelView, init_lora, set_trainable
from .privacy.attacker import membership_labels
from .privacy.dp import build_dp_mode
from .privacy.loss_profile import LossProfiles
from .privacy.objectives import LabelledMaps, MembershipBatches, objective_class
from .privacy.objectives.membership import (
    CALIBRATED,
    CALIBRATED_LOSS,
    CALIBRATED_PROFILE,
    ERROR,
    relative_loss_change,
)
from .rules import Arrays, build_rule, client_rank
from .runtime import ModelRuntime, get_runtime, get_splits
from .training import TrainStats


def round_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from (run seed, client, round, ...)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint64)[0] >> 1)


def membership_batches(
    runtime: ModelRuntime,
    sets: AttackSets,
    gen: torch.Generator,
    privacy: PrivacyConfig | None = None,
    precision: str = NO_MIXED,
) -> MembershipBatches:
    """Loss maps for a proxy attacker: balanced random aux batches during the round, D_te after it (no grad).

    ``privacy`` says what the attacker sees (``attacker_features``, ``attacker_feature_draws``);
    the member batch's own features come from the objective (``ProxyAttackerObjective.features``).
    ``precision`` (``train.mixed_precision``): the UNet passes run under the training step's autocast.
    """
    m_aux, n_aux, m_test, n_test = sets.member_aux, sets.nonmember_aux, sets.member_test, sets.nonmember_test
    draws = privacy.attacker_feature_draws if privacy else 1
    kind = privacy.attacker_features if privacy else ERROR
    if privacy is not None and kind == CALIBRATED_PROFILE:
        return profile_batches(runtime, sets, gen, privacy, precision)
    reference = runtime.adapters_disabled if kind in (CALIBRATED, CALIBRATED_LOSS) else None

    def maps(latents: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), autocast(runtime.device, precision):
            if kind == CALIBRATED_LOSS:
                assert reference is not None
                pairs = [
                    loss_map_pair(runtime.unet, runtime.scheduler, latents, cond, gen, reference) for _ in range(draws)
                ]
                return relative_loss_change([a for a, _ in pairs], [b for _, b in pairs])
            got = [
                loss_maps(runtime.unet, runtime.scheduler, latents, cond, gen, reference=reference)
                for _ in range(draws)
            ]
        return got[0] if draws == 1 else torch.stack(got).mean(0)

    def aux(k: int) -> LabelledMaps:
        mi = torch.randint(0, len(m_aux), (k,), generator=gen).to(runtime.device)
        ni = torch.randint(0, len(n_aux), (k,), generator=gen).to(runtime.device)
        latents = torch.cat([m_aux.latents[mi], n_aux.latents[ni]])
        cond = torch.cat([m_aux.cond[mi], n_aux.cond[ni]])
        return maps(latents, cond), membership_labels(k, k)

    def test() -> LabelledMaps:
        both = torch.cat([maps(m_test.latents, m_test.cond), maps(n_test.latents, n_test.cond)])
        return both, membership_labels(len(m_test), len(n_test))

    return MembershipBatches(aux=aux, test=test, device=runtime.device)


def profile_batches(
    runtime: ModelRuntime, sets: AttackSets, gen: torch.Generator, privacy: PrivacyConfig, precision: str
) -> MembershipBatches:
    """``membership_batches`` for calibrated-profile features: the profiles of the members (D^m_aux,
    then D^m_te: the trainer's row order; each recomputed by the steps that train on it) and of D^nm_aux in
    one cache; D^nm_te's only after the round, for the proxy's test accuracy."""
    m_aux, n_aux, m_test, n_test = sets.member_aux, sets.nonmember_aux, sets.member_test, sets.nonmember_test
    n_members = len(m_aux) + len(m_test)

    def profiles(parts: list[SampleSet], seed: int, trained_rows: int = 0) -> LossProfiles:
        return LossProfiles(
            runtime.unet,
            runtime.scheduler,
            Samples.concat(parts),
            runtime.adapters_disabled,
            privacy.attacker_feature_draws,
            privacy.attacker_profile_bands,
            seed,
            precision,
            trained_rows,
        )

    closed_loop = n_members if privacy.profile_closed_loop else 0
    cache = profiles([m_aux, m_test, n_aux], int(torch.randint(0, 2**62, (1,), generator=gen)), closed_loop)
    test_seed = int(torch.randint(0, 2**62, (1,), generator=gen))

    def aux(k: int) -> LabelledMaps:
        mi = torch.randint(0, len(m_aux), (k,), generator=gen)
        ni = n_members + torch.randint(0, len(n_aux), (k,), generator=gen)
        return cache.rows(torch.cat([mi, ni])), membership_labels(k, k)

    def test() -> LabelledMaps:
        members = cache.refresh(torch.arange(len(m_aux), n_members))[len(m_aux) : n_members]
        nonmembers = profiles([n_test], test_seed).refresh()
        return torch.cat([members, nonmembers]), membership_labels(len(m_test), len(n_test))

    return MembershipBatches(aux=aux, test=test, device=runtime.device, profiles=cache)


@dataclass
class ClientRoundResult:
    state: Arrays  # the trained adapter (this client's rank)
    stats: TrainStats
    objective_state: dict[str, torch.Tensor]
    upload: Arrays = field(default_factory=dict)  # what the rule sends to the server
    kept: Arrays = field(default_factory=dict)  # what the rule keeps on the client
    eval_only: Arrays = field(default_factory=dict)  # for the audit, never aggregated
    dp_state: dict[str, torch.Tensor] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)  # what the reply may carry (the DP mode decides)


def client_round(
    cfg: ExperimentConfig,
    client_id: int,
    payload: Mapping[str, np.ndarray],
    server_round: int,
    objective_state: Mapping[str, torch.Tensor] | None = None,
    kept: Mapping[str, np.ndarray] | None = None,
    dp_state: Mapping[str, torch.Tensor] | None = None,
    silo: SiloData | None = None,
) -> ClientRoundResult:
    """One client's round with torch's global generator seeded from (run seed, client, round).

    The proxy attacker's dropout draws from that generator; unseeded, its masks depended on
    whatever the Ray worker had run before, so MP-/SMP-LoRA numbers changed from run to run.
    ``silo``: this client's own data and split (deployment, data.dataset = "silo"); None: its
    partition of the config's dataset.
    """
    started = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(round_seed(cfg.run.seed, client_id, server_round, 5))
        result = _client_round(cfg, client_id, payload, server_round, objective_state, kept or {}, dp_state, silo)
    if "train_s" in result.metrics:  # the rest of the round: loading the model and the data, encoding, set-up
        result.metrics["setup_s"] = time.perf_counter() - started - result.metrics["train_s"]
    return result


def _client_round(
    cfg: ExperimentConfig,
    client_id: int,
    payload: Mapping[str, np.ndarray],
    server_round: int,
    objective_state: Mapping[str, torch.Tensor] | None,
    kept: Mapping[str, np.ndarray],
    dp_state: Mapping[str, torch.Tensor] | None,
    silo: SiloData | None = None,
) -> ClientRoundResult:
    """Build the adapter from what the server sent (``payload``) and what this client kept, train
    on its members, and return what the aggregation rule uploads and keeps."""
    if not 0 <= client_id < cfg.federation.num_clients:
        raise ValueError(
            f"client id {client_id} is outside 0..{cfg.federation.num_clients - 1} (federation.num_clients)"
        )
    rule, dp = build_rule(cfg), build_dp_mode(cfg)
    objective_cls = objective_class(cfg.train.method)
    runtime = get_runtime(cfg, client_rank(cfg, client_id))
    if silo is None:
        splits, dataset, index = get_splits(cfg), load_dataset(cfg.data), client_id
    else:
        splits, dataset, index = silo.splits, silo.dataset, 0
    members = runtime.encode(dataset, splits.clients[index].members)
    seed = round_seed(cfg.run.seed, client_id, server_round)
    gen = torch.Generator().manual_seed(round_seed(seed, 1))
    batches = (
        membership_batches(
            runtime, attack_sets(runtime, dataset, splits, [index]), gen, cfg.privacy, cfg.train.mixed_precision
        )
        if objective_cls.needs_aux
        else None
    )
    objective = objective_cls.build(cfg, members.latents[0].numel(), batches, round_seed(cfg.run.seed, client_id))
    if objective_state:
        objective.load_state_dict(dict(objective_state))
    if rule.fresh_lora:  # a new adapter every round on top of the merged base (FLoRA)
        init_lora(runtime.unet, round_seed(cfg.run.seed, client_id, server_round, 3), cfg.model.lora_a_init)
        init = runtime.get_lora()
    else:
        init = runtime.initial
    setup = rule.client_setup(client_id, payload, kept, init)
    runtime.show(ModelView(lora=setup.adapter, deltas=setup.base_deltas))
    set_trainable(runtime.unet, train_a=rule.train_a and not dp.freezes_a)
    try:
        stats, dp_out = dp.train(runtime, members, objective, seed, dp_state)
    finally:
        set_trainable(runtime.unet, train_a=True)
    stats.extra.update(objective.after_round())
    trained = runtime.get_lora()
    kept_now = rule.client_keep(trained, setup)
    metrics = {
        "train_loss": stats.loss_mean,
        "train_loss_first": stats.loss_first,
        "train_loss_last": stats.loss_last,
        "train_s": stats.seconds,
        "steps": float(stats.steps),
        **stats.extra,
    }
    return ClientRoundResult(
        state=trained,
        stats=stats,
        objective_state=objective.state_dict(),
        upload=rule.client_upload(trained),
        kept=kept_now,
        eval_only=rule.client_eval_only(kept_now),
        dp_state=dp_out,
        metrics=dp.released(metrics),
    )
