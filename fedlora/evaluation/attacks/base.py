"""What every attack shares: the sample sets, the target it queries, its result and its context.

Threat model (the SMP-LoRA paper's protocol): the attacker queries the target model, knows
D_aux (labelled members D^m_aux and non-members D^nm_aux) and is scored on the disjoint D_te.
Every choice an attack makes (epoch, timestep, sign, threshold, classifier) is made on D_aux;
D_te is scored once, after the choice. Scores are "higher = member".

The public base model is part of the threat model: anyone can query it, so a *calibrated*
attack scores each sample under the audited model minus under the base, on the same draws
(difficulty calibration, Watson et al., ICLR 2022), through ``AttackContext.reference``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import numpy as np
import torch

from ...config import EvaluationConfig
from ...models.diffusion import SampleSet
from ...privacy.attacker import membership_labels
from ..leakage import leakage_metrics, roc_points


@dataclass
class Samples:
    latents: torch.Tensor
    cond: torch.Tensor

    def __len__(self) -> int:
        return len(self.latents)

    @staticmethod
    def concat(parts: Sequence[SampleSet]) -> Samples:
        return Samples(torch.cat([p.latents for p in parts]), torch.cat([p.cond for p in parts]))


@dataclass
class AttackSets:
    member_aux: SampleSet
    nonmember_aux: SampleSet
    member_test: SampleSet
    nonmember_test: SampleSet


class AttackTarget(Protocol):
    """What an attack may ask of the model under attack (``fedlora.runtime.ModelRuntime`` has it all).

    Loss-based attacks use ``loss_maps``/``mean_loss``; the diffusion attacks query ``unet`` and
    ``scheduler`` directly.
    """

    unet: Any
    scheduler: Any

    def loss_maps(self, samples: SampleSet, gen: torch.Generator) -> torch.Tensor: ...

    def mean_loss(self, samples: SampleSet, draws: int, seed: int) -> torch.Tensor: ...

    def empty_caption(self, n: int) -> torch.Tensor: ...


@dataclass
class AttackResult:
    metrics: dict[str, Any]
    fpr: np.ndarray
    tpr: np.ndarray
    details: dict[str, Any] = field(default_factory=dict)
    scores: np.ndarray | None = None  # D_te scores, members first (the verdict bootstraps them)
    is_member: np.ndarray | None = None


Aux = tuple[np.ndarray, np.ndarray]  # (aux scores oriented like the test scores, aux membership)


def attack_result(
    scores: np.ndarray, is_member: np.ndarray, threshold: float, aux: Aux | None = None, **details: Any
) -> AttackResult:
    """Leakage metrics and the ROC of test scores at an aux-chosen threshold.

    ``aux``: the held-out aux scores the attack calibrated on, which fix the thresholds of the
    aux-side TPR at low FPR (without them those stay None).
    """
    fpr, tpr = roc_points(scores, is_member)
    metrics = leakage_metrics(scores, is_member, threshold, aux=aux)
    return AttackResult(metrics, fpr, tpr, {"threshold": threshold, **details}, np.asarray(scores), is_member)


def labelled(members: SampleSet, nonmembers: SampleSet) -> tuple[Samples, np.ndarray]:
    """Members then non-members as one set, with the boolean membership of each."""
    return Samples.concat([members, nonmembers]), membership_labels(len(members), len(nonmembers)).numpy().astype(bool)


@dataclass
class AttackContext:
    """One audit of one target: what every attack function receives.

    ``requested`` lists every attack of this audit, so that attacks which share work (the two
    learned-MLP selections train in the same epochs) can do it once and keep it in ``shared``.
    """

    target: AttackTarget
    sets: AttackSets
    cfg: EvaluationConfig
    seed: int
    requested: tuple[str, ...] = ()
    desc: str = "attack"
    shared: dict[str, Any] = field(default_factory=dict)
    # While entered, ``target`` computes the public base model (calibrated attacks).
    reference: Callable[[], AbstractContextManager[Any]] | None = None
    # While entered, ``target`` computes a shadow LoRA trained from the base on these samples (LiRA).
    shadow: Callable[[SampleSet, int], AbstractContextManager[Any]] | None = None

    def need_reference(self, attack: str) -> Callable[[], AbstractContextManager[Any]]:
        if self.reference is None:
            raise ValueError(f"attack {attack!r} compares against the base model, but this audit has no reference")
        return self.reference


AttackFn = Callable[[AttackContext], AttackResult]
F = TypeVar("F", bound=Callable[..., np.ndarray])


def calibrated(score: F, reference: Callable[[], AbstractContextManager[Any]], log_magnitude: bool = False) -> F:
    """``score`` under the audited model minus ``score`` under the base, with the same arguments.

    ``score`` must be deterministic in its arguments (seeded draws), so both models see the same
    (t, ε): the difference removes each sample's own difficulty. ``log_magnitude``: the score is
    a negated magnitude (−error^p, −norm^p), which spans orders of magnitude across samples;
    compare it on the log scale, log(base magnitude) − log(own magnitude).
    """

    def difference(*args: Any, **kwargs: Any) -> np.ndarray:
        own = score(*args, **kwargs)
        with reference():
            base = score(*args, **kwargs)
        if log_magnitude:
            return np.log(np.maximum(-base, 1e-30)) - np.log(np.maximum(-own, 1e-30))
        return own - base

    return difference  # type: ignore[return-value]
