"""What every attack shares: the sample sets, the target it queries, its result and its context.

Threat model (the SMP-LoRA paper's protocol): the attacker queries the target model, knows
D_aux (labelled members D^m_aux and non-members D^nm_aux) and is scored on the disjoint D_te.
Every choice an attack makes (epoch, timestep, sign, threshold, classifier) is made on D_aux;
D_te is scored once, after the choice. Scores are "higher = member".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

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


@dataclass
class AttackResult:
    metrics: dict[str, Any]
    fpr: np.ndarray
    tpr: np.ndarray
    details: dict[str, float] = field(default_factory=dict)


def attack_result(scores: np.ndarray, is_member: np.ndarray, threshold: float, **details: float) -> AttackResult:
    """Leakage metrics and the ROC of test scores at an aux-chosen threshold."""
    fpr, tpr = roc_points(scores, is_member)
    return AttackResult(leakage_metrics(scores, is_member, threshold), fpr, tpr, {"threshold": threshold, **details})


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


AttackFn = Callable[[AttackContext], AttackResult]
