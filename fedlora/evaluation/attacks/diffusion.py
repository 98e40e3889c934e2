"""What the diffusion-specific attacks share: ε_θ queries, the noise schedule, and choosing a
timestep, a sign and a threshold on D_aux.

Timestep t indexes the scheduler's ``alphas_cumprod`` (ᾱ_t), as in the training loss, so
x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε. The clean latent x_0 is queried at t = 0, as PIA and SecMI do.

Orientation: the scoring functions keep the papers' sign (lower error or norm = member). On a
small, hard-overfit LoRA we measured the opposite ordering for PIA and for SecMI at small t_sec
(aux AUC near 0: ε_θ is steep around memorised latents, smooth around the rest), which a fixed
sign would report as "no leakage". So by default (``evaluation.diffusion_attack_sign =
"from-aux"``) the sign is one more hyper-parameter fitted on D_aux, recorded as details["sign"];
"paper" keeps the published one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from ...device import to_host
from ..leakage import best_threshold
from .base import AttackResult, AttackSets, SampleSet, attack_result, calibrated, labelled

BATCH = 256


class DiffusionModel(Protocol):
    """What these attacks need of the target: its noise predictor and its noise schedule."""

    unet: Any
    scheduler: Any


@contextlib.contextmanager
def eval_mode(unet: Any) -> Iterator[None]:
    was_training = unet.training
    unet.eval()
    try:
        yield
    finally:
        unet.train(was_training)


def alphas(model: DiffusionModel) -> torch.Tensor:
    """ᾱ_t as float64 on the CPU, from the schedule's config (the scheduler's own copy follows the
    device of its last ``add_noise``; the attacks read single values of it)."""
    return type(model.scheduler).from_config(model.scheduler.config).alphas_cumprod.double()


def num_timesteps(model: DiffusionModel) -> int:
    return int(model.scheduler.config.num_train_timesteps)


def check_timesteps(key: str, timesteps: Sequence[int], num_train_timesteps: int) -> tuple[int, ...]:
    """Refuse timesteps the schedule does not have, naming the config key."""
    ts = tuple(int(t) for t in timesteps)
    if not ts:
        raise ValueError(f"{key} is empty; give at least one timestep")
    bad = [t for t in ts if not 0 <= t < num_train_timesteps]
    if bad:
        raise ValueError(
            f"{key} = {list(ts)} has {bad}: every timestep must lie in 0..{num_train_timesteps - 1} "
            f"(the scheduler's num_train_timesteps = {num_train_timesteps})"
        )
    return ts


def device_of(unet: Any) -> tuple[torch.device, torch.dtype]:
    p = next(unet.parameters())
    return p.device, p.dtype


def eps_theta(unet: Any, x: torch.Tensor, t: int | torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """ε_θ(x, t, c) for one batch; ``t`` a shared int or one per sample. Float32 on the UNet's device."""
    device, dtype = device_of(unet)
    t = t.long() if torch.is_tensor(t) else torch.full((len(x),), int(t), dtype=torch.long)
    out = unet(x.to(device, dtype), t.to(device), encoder_hidden_states=cond.to(device, dtype)).sample
    return out.float()


def host_scores(scores: torch.Tensor) -> np.ndarray:
    """Per-sample scores computed on the device -> float64 numpy (where AUCs and thresholds are fitted)."""
    return to_host(scores.double()).numpy()


def noised(alphas_cumprod: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor, t: int) -> torch.Tensor:
    """x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε, written from ᾱ (PIA's x_t with ε = ε_0)."""
    a = float(alphas_cumprod[t])
    return a**0.5 * x0 + (1.0 - a) ** 0.5 * eps


def batches(n: int, size: int = BATCH) -> Iterator[slice]:
    for i in range(0, n, size):
        yield slice(i, i + size)


def auc(scores: np.ndarray, is_member: np.ndarray) -> float:
    if not np.isfinite(scores).all():
        raise ValueError("attack scores contain NaN or inf")
    return float(roc_auc_score(is_member, scores))


def oriented(aucs: Sequence[float], from_aux: bool) -> tuple[int, float]:
    """Index of the best aux AUC and the sign that orients the statistic (+1: the paper's)."""
    strength = [max(a, 1.0 - a) if from_aux else a for a in aucs]
    best = int(np.argmax(strength))  # ties: the first (smallest listed) t
    return best, (-1.0 if from_aux and aucs[best] < 0.5 else 1.0)


# (model, samples, timesteps, p) -> (len(timesteps), N) scores, higher = member in the paper's sign
TimestepScores = Callable[[DiffusionModel, SampleSet, Sequence[int], Any], np.ndarray]


Reference = Callable[[], AbstractContextManager[Any]]


def _table(
    scores: TimestepScores, model: DiffusionModel, p: float | None, reference: Reference | None, magnitude: bool
) -> Callable[[SampleSet, Sequence[int]], np.ndarray]:
    """The score table, calibrated against the base if asked (on the log scale for magnitudes)."""

    def table(samples: SampleSet, ts: Sequence[int]) -> np.ndarray:
        return scores(model, samples, ts, p)

    return calibrated(table, reference, log_magnitude=magnitude) if reference else table


def timestep_attack(
    scores: TimestepScores,
    model: DiffusionModel,
    sets: AttackSets,
    timesteps: Sequence[int],
    p: float | None,
    from_aux: bool,
    key: str,
    reference: Reference | None = None,
    magnitude: bool = True,
) -> AttackResult:
    """Pick t (and, if ``from_aux``, the sign) by aux AUC, then the threshold on aux; only then
    score D_te, at that t alone. ``key`` names the config key of ``timesteps`` in errors;
    ``reference`` turns the score into its difference from the base model's (calibration),
    on the log scale when the score is a negated ``magnitude`` (an error or a norm)."""
    timesteps = check_timesteps(key, timesteps, num_timesteps(model))
    table = _table(scores, model, p, reference, magnitude)
    aux, aux_member = labelled(sets.member_aux, sets.nonmember_aux)
    aux_table = table(aux, timesteps)
    aucs = [auc(row, aux_member) for row in aux_table]
    best, sign = oriented(aucs, from_aux)
    t = timesteps[best]
    threshold = best_threshold(sign * aux_table[best], aux_member)
    test, test_member = labelled(sets.member_test, sets.nonmember_test)
    test_scores = sign * table(test, [t])[0]
    per_t = {f"aux_auc_t{ts}": a for ts, a in zip(timesteps, aucs)}  # in the paper's orientation
    best_auc = aucs[best] if sign > 0 else 1.0 - aucs[best]
    aux_scores = (sign * aux_table[best], aux_member)
    norm = {} if p is None else {"p": float(p)}  # the statistic's exponent, where it has one
    return attack_result(
        test_scores, test_member, threshold, aux=aux_scores, t=float(t), sign=sign, aux_auc=best_auc, **per_t, **norm
    )


def multi_timestep_attack(
    scores: TimestepScores,
    model: DiffusionModel,
    sets: AttackSets,
    timesteps: Sequence[int],
    p: float,
    from_aux: bool,
    key: str,
    reference: Reference | None = None,
    magnitude: bool = True,
) -> AttackResult:
    """The statistic summed over a *set* of timesteps, the set grown greedily on aux.

    Each candidate t's aux row is oriented (sign from aux if ``from_aux``) and standardised with
    the aux mean and std; starting from the best single t, the t that most raises the aux AUC of
    the mean standardised score is added until none does. D_te is scored once, on that set, with
    the aux standardisation.
    """
    timesteps = check_timesteps(key, timesteps, num_timesteps(model))
    table = _table(scores, model, p, reference, magnitude)
    aux, aux_member = labelled(sets.member_aux, sets.nonmember_aux)
    rows = table(aux, timesteps)
    aucs = [auc(row, aux_member) for row in rows]
    signs = np.array([oriented([a], from_aux)[1] for a in aucs])
    mean, std = rows.mean(1), rows.std(1) + 1e-12
    z = signs[:, None] * (rows - mean[:, None]) / std[:, None]

    def strength(chosen: list[int]) -> float:
        return auc(z[chosen].mean(0), aux_member)

    chosen = [int(np.argmax([strength([i]) for i in range(len(timesteps))]))]
    while len(chosen) < len(timesteps):
        rest = [i for i in range(len(timesteps)) if i not in chosen]
        gains = [strength(chosen + [i]) for i in rest]
        if max(gains) <= strength(chosen):
            break
        chosen.append(rest[int(np.argmax(gains))])
    chosen.sort()
    ts = [timesteps[i] for i in chosen]
    aux_scores = z[chosen].mean(0)
    threshold = best_threshold(aux_scores, aux_member)
    test, test_member = labelled(sets.member_test, sets.nonmember_test)
    test_rows = table(test, ts)
    idx = np.array(chosen)
    test_z = signs[idx, None] * (test_rows - mean[idx, None]) / std[idx, None]
    return attack_result(
        test_z.mean(0),
        test_member,
        threshold,
        aux=(aux_scores, aux_member),
        n_timesteps=float(len(ts)),
        timesteps=" ".join(str(t) for t in ts),
        aux_auc=strength(chosen),
        p=float(p),
    )
