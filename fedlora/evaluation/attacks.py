"""Membership-inference attacks on a trained model, following the SMP-LoRA paper's protocol.

The attacker knows D_aux (members D^m_aux and non-members D^nm_aux) and is scored on the
disjoint D_te; every choice it makes (epoch, timestep, sign, threshold) is made on D_aux. Here
the learned and loss attacks; ``diffusion_attacks`` adds PIA, SecMI, a score-norm and a white-box
gradient-norm attack (``run_attacks`` dispatches all of them by their stable keys):

- ``learned-mlp-paper``: a fresh MLP h' (the proxy attacker's architecture) trained on all of
  D_aux; the epoch with the best *test* ASR is reported (the paper's selection; optimistic
  for the attacker, so conservative for a defence).
- ``learned-mlp``: the same MLP trained on D_aux minus a held-out part; its epoch (by held-out
  AUC, which is less noisy than accuracy on a dozen samples) and threshold are chosen on that
  held-out aux data, then applied once to D_te (an honest attack).
- ``loss-threshold``: mean denoising loss over several (t, eps) draws (Yeom et al. 2018,
  Matsumoto et al. 2023); the threshold is chosen on D_aux and applied to D_te.

Each learned-attack epoch draws fresh (t, eps) for every sample, as the paper does (with
``attack_feature_draws`` > 1 the MLP sees the mean of that many maps: a stronger attacker than
the paper's); the two MLP variants share the draws of an epoch, which halves the UNet cost.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch.nn import functional as F
from tqdm.auto import tqdm

from ..config import EvaluationConfig
from ..privacy.attacker import MembershipMLP, membership_labels
from .leakage import best_threshold, leakage_metrics, roc_points

PAPER, HONEST, LOSS = "learned-mlp-paper", "learned-mlp", "loss-threshold"
DIFFUSION = ("pia", "secmi", "score-norm", "gradient-norm")  # in diffusion_attacks.py; need .unet/.scheduler


class SampleSet(Protocol):
    latents: torch.Tensor
    cond: torch.Tensor

    def __len__(self) -> int: ...


class LossModel(Protocol):
    """What an attack needs of the target: per-sample loss maps and mean losses."""

    def loss_maps(self, samples, gen: torch.Generator) -> torch.Tensor: ...

    def mean_loss(self, samples, draws: int, seed: int) -> torch.Tensor: ...


@dataclass
class Samples:
    latents: torch.Tensor
    cond: torch.Tensor

    def __len__(self) -> int:
        return len(self.latents)

    @staticmethod
    def concat(parts: Sequence[SampleSet]) -> "Samples":
        return Samples(torch.cat([p.latents for p in parts]), torch.cat([p.cond for p in parts]))


@dataclass
class AttackSets:
    member_aux: SampleSet
    nonmember_aux: SampleSet
    member_test: SampleSet
    nonmember_test: SampleSet


@dataclass
class AttackResult:
    metrics: dict[str, float]
    fpr: np.ndarray
    tpr: np.ndarray
    details: dict[str, float] = field(default_factory=dict)


def _result(scores: np.ndarray, is_member: np.ndarray, threshold: float, **details: float) -> AttackResult:
    fpr, tpr = roc_points(scores, is_member)
    return AttackResult(leakage_metrics(scores, is_member, threshold), fpr, tpr, {"threshold": threshold, **details})


def loss_threshold_attack(model: LossModel, sets: AttackSets, draws: int, seed: int) -> AttackResult:
    def scores(members: SampleSet, nonmembers: SampleSet, s: int) -> tuple[np.ndarray, np.ndarray]:
        loss = torch.cat([model.mean_loss(members, draws, s), model.mean_loss(nonmembers, draws, s + 1)])
        return -loss.numpy(), membership_labels(len(members), len(nonmembers)).numpy().astype(bool)

    aux_scores, aux_member = scores(sets.member_aux, sets.nonmember_aux, seed)
    test_scores, test_member = scores(sets.member_test, sets.nonmember_test, seed + 2)
    threshold = best_threshold(aux_scores, aux_member)
    return _result(test_scores, test_member, threshold, draws=float(draws))


class _MlpRun:
    """One h' being trained, with its per-epoch test scores."""

    def __init__(self, in_features: int, cfg: EvaluationConfig, seed: int):
        torch.manual_seed(seed)
        self.model = MembershipMLP(in_features)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.attack_learning_rate, weight_decay=cfg.attack_weight_decay)

    def train_epoch(self, member_maps: torch.Tensor, nonmember_maps: torch.Tensor, batch: int, gen: torch.Generator) -> None:
        """Balanced batches of ``batch`` members + ``batch`` non-members; the smaller side is resampled."""
        self.model.train()
        n = max(len(member_maps), len(nonmember_maps))
        mi = _cycled_permutation(len(member_maps), n, gen)
        ni = _cycled_permutation(len(nonmember_maps), n, gen)
        for i in range(0, n, batch):
            x = torch.cat([member_maps[mi[i : i + batch]], nonmember_maps[ni[i : i + batch]]])
            y = membership_labels(len(mi[i : i + batch]), len(ni[i : i + batch]))
            loss = F.cross_entropy(self.model(x), y)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()

    @torch.no_grad()
    def scores(self, maps: torch.Tensor) -> np.ndarray:
        self.model.eval()
        return self.model.member_score(maps).numpy().astype(np.float64)


def _cycled_permutation(size: int, length: int, gen: torch.Generator) -> torch.Tensor:
    reps = -(-length // size)
    return torch.cat([torch.randperm(size, generator=gen) for _ in range(reps)])[:length]


def _split_val(n: int, fraction: float, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    perm = torch.randperm(n, generator=gen)
    k = min(n - 1, max(1, int(round(n * fraction))))
    return perm[k:], perm[:k]


def learned_mlp_attacks(
    model: LossModel, sets: AttackSets, cfg: EvaluationConfig, seed: int, want: Sequence[str] = (PAPER, HONEST),
    desc: str = "attack",
) -> dict[str, AttackResult]:
    """Train h' for ``cfg.attack_epochs`` epochs; return the paper's and/or the honest selection."""
    gen = torch.Generator().manual_seed(seed)
    m_aux, n_aux = sets.member_aux, sets.nonmember_aux
    m_fit, m_val = _split_val(len(m_aux), cfg.attack_val_fraction, gen)
    n_fit, n_val = _split_val(len(n_aux), cfg.attack_val_fraction, gen)
    test = Samples.concat([sets.member_test, sets.nonmember_test])
    test_member = membership_labels(len(sets.member_test), len(sets.nonmember_test)).numpy().astype(bool)
    val_member = membership_labels(len(m_val), len(n_val)).numpy().astype(bool)
    in_features = sets.member_aux.latents[0].numel()
    runs = {name: _MlpRun(in_features, cfg, seed + i) for i, name in enumerate((PAPER, HONEST)) if name in want}
    history: dict[str, list] = {name: [] for name in runs}
    def maps(samples: SampleSet) -> torch.Tensor:
        draws = [model.loss_maps(samples, gen) for _ in range(cfg.attack_feature_draws)]
        return torch.stack(draws).mean(0) if len(draws) > 1 else draws[0]

    for _ in tqdm(range(cfg.attack_epochs), desc=desc, unit="epoch", leave=False, mininterval=2.0):
        m_maps, n_maps, t_maps = maps(m_aux), maps(n_aux), maps(test)
        if PAPER in runs:
            runs[PAPER].train_epoch(m_maps, n_maps, cfg.attack_batch_size, gen)
            history[PAPER].append(runs[PAPER].scores(t_maps))
        if HONEST in runs:
            run = runs[HONEST]
            run.train_epoch(m_maps[m_fit], n_maps[n_fit], cfg.attack_batch_size, gen)
            val_scores = run.scores(torch.cat([m_maps[m_val], n_maps[n_val]]))
            threshold = best_threshold(val_scores, val_member)
            val_acc = float(np.mean((val_scores >= threshold) == val_member))
            val_auc = float(roc_auc_score(val_member, val_scores))
            history[HONEST].append((val_auc, val_acc, threshold, run.scores(t_maps)))
    out: dict[str, AttackResult] = {}
    if PAPER in runs:
        asrs = [float(np.mean((s >= 0.5) == test_member)) for s in history[PAPER]]
        best = int(np.argmax(asrs))
        out[PAPER] = _result(history[PAPER][best], test_member, 0.5, epoch=float(best + 1))
    if HONEST in runs:
        # the best held-out AUC; ties go to the later epoch (more training, same evidence)
        aucs = np.array([h[0] for h in history[HONEST]])
        best = int(np.flatnonzero(aucs == aucs.max())[-1])
        val_auc, val_acc, threshold, scores = history[HONEST][best]
        out[HONEST] = _result(scores, test_member, threshold, epoch=float(best + 1), val_auc=val_auc,
                              val_accuracy=val_acc, n_val=float(len(val_member)))
    return out


def run_attacks(
    model: LossModel, sets: AttackSets, cfg: EvaluationConfig, seed: int, desc: str = "attack"
) -> dict[str, AttackResult]:
    """Every attack ``cfg.attacks`` names, on one target model."""
    out: dict[str, AttackResult] = {}
    mlp = [a for a in cfg.attacks if a in (PAPER, HONEST)]
    if mlp:
        out.update(learned_mlp_attacks(model, sets, cfg, seed, mlp, desc))
    if LOSS in cfg.attacks:
        out[LOSS] = loss_threshold_attack(model, sets, cfg.loss_attack_draws, seed + 7)
    diffusion = [a for a in cfg.attacks if a in DIFFUSION]
    if diffusion:
        from .diffusion_attacks import run_diffusion_attacks  # imports this module

        out.update(run_diffusion_attacks(model, sets, cfg, seed + 11, diffusion))
    return {a: out[a] for a in cfg.attacks}
