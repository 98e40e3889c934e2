"""Diffusion-specific membership-inference attacks on a target UNet (+ LoRA).

Threat model as in ``attacks``: the attacker queries the target model, knows D_aux (labelled
members and non-members) and scores the disjoint D_te. Every choice an attack makes (its
timestep, its threshold, its classifier) is fitted on D_aux alone; D_te is scored once, after
the choice, so it cannot influence it. Scores are "higher = member".

- ``pia``: PIA, proximal initialisation (Kong et al., ICLR 2024).
- ``secmi``: SecMI_stat, the DDIM t-error (Duan et al., ICML 2023).
- ``score-norm``: SimA's single-query score norm (Rao et al., arXiv 2509.25003).
- ``gradient-norm``: GSA1-style white-box LoRA-gradient norms (Pang et al., arXiv 2308.06405);
  the honest-but-curious server's view, since it holds each client's adapter.

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
from typing import Any, Callable, Iterator, Protocol, Sequence

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from tqdm.auto import tqdm

from ..config import EvaluationConfig
from ..models.lora import LORA_A, LORA_B
from ..privacy.attacker import membership_labels
from .attacks import DIFFUSION, AttackResult, AttackSets, SampleSet, Samples, _result
from .leakage import best_threshold

PIA, SECMI, SCORE_NORM, GRADIENT_NORM = DIFFUSION
_BATCH = 256
_CV_FOLDS = 5


class DiffusionModel(Protocol):
    """What these attacks need of the target: its noise predictor and its noise schedule."""

    unet: Any
    scheduler: Any


# ---------------------------------------------------------------- shared helpers


@contextlib.contextmanager
def _eval_mode(unet) -> Iterator[None]:
    was_training = unet.training
    unet.eval()
    try:
        yield
    finally:
        unet.train(was_training)


def _alphas(model: DiffusionModel) -> torch.Tensor:
    return model.scheduler.alphas_cumprod.double().cpu()


def _num_timesteps(model: DiffusionModel) -> int:
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


def _device(unet) -> tuple[torch.device, torch.dtype]:
    p = next(unet.parameters())
    return p.device, p.dtype


def _eps(unet, x: torch.Tensor, t: int | torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """ε_θ(x, t, c) for one batch; ``t`` a shared int or one per sample. Returns CPU float."""
    device, dtype = _device(unet)
    t = t.long() if torch.is_tensor(t) else torch.full((len(x),), int(t), dtype=torch.long)
    out = unet(x.to(device, dtype), t.to(device), encoder_hidden_states=cond.to(device, dtype)).sample
    return out.float().cpu()


def noised(alphas_cumprod: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor, t: int) -> torch.Tensor:
    """x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε, written from ᾱ (PIA's x_t with ε = ε_0)."""
    a = float(alphas_cumprod[t])
    return a**0.5 * x0 + (1.0 - a) ** 0.5 * eps


def ddim_step(x: torch.Tensor, eps: torch.Tensor, alpha_from: float, alpha_to: float) -> torch.Tensor:
    """One deterministic (eta = 0) DDIM move from noise level ᾱ_from to ᾱ_to.

    Upwards (ᾱ_to < ᾱ_from) it is a DDIM inversion step, downwards a denoising step; with the
    same ε both ways it is its own inverse, so SecMI's t-error measures only how ε_θ changes.
    """
    x0_pred = (x - (1.0 - alpha_from) ** 0.5 * eps) / alpha_from**0.5
    return alpha_to**0.5 * x0_pred + (1.0 - alpha_to) ** 0.5 * eps


def _batches(n: int, size: int = _BATCH) -> Iterator[slice]:
    for i in range(0, n, size):
        yield slice(i, i + size)


def _labelled(members: SampleSet, nonmembers: SampleSet) -> tuple[Samples, np.ndarray]:
    return Samples.concat([members, nonmembers]), membership_labels(len(members), len(nonmembers)).numpy().astype(bool)


def _auc(scores: np.ndarray, is_member: np.ndarray) -> float:
    if not np.isfinite(scores).all():
        raise ValueError("attack scores contain NaN or inf")
    return float(roc_auc_score(is_member, scores))


# ---------------------------------------------------------------- scoring functions


@torch.no_grad()
def pia_scores(model: DiffusionModel, samples: SampleSet, timesteps: Sequence[int], p: float = 4.0) -> np.ndarray:
    """PIA (Kong et al., ICLR 2024): −Σ|ε_θ(x_t, t) − ε_0|^p with ε_0 = ε_θ(x_0, 0), x_t built from ε_0.

    A member's x_0 sits where the model's deterministic trajectory is self-consistent, so the
    noise it predicts at t matches the noise it proposed at 0. Returns (len(timesteps), N);
    ε_0 is computed once for all t (2 queries per t, as in the paper).
    """
    unet, alphas = model.unet, _alphas(model)
    out = np.zeros((len(timesteps), len(samples)))
    with _eval_mode(unet):
        for sl in _batches(len(samples)):
            x0, c = samples.latents[sl].float(), samples.cond[sl]
            eps0 = _eps(unet, x0, 0, c)
            for i, t in enumerate(timesteps):
                err = _eps(unet, noised(alphas, x0, eps0, t), t, c) - eps0
                out[i, sl] = -err.abs().pow(p).flatten(1).sum(1).double().numpy()
    return out


@torch.no_grad()
def secmi_scores(model: DiffusionModel, samples: SampleSet, t_sec: int = 100, k: int = 10) -> np.ndarray:
    """SecMI_stat (Duan et al., ICML 2023): −‖x̃_{t_sec} − x_{t_sec}‖² (the negated t-error).

    x_0 is DDIM-inverted to x_{t_sec} in steps of k, moved one more step up to t_sec + k and
    denoised back; members reconstruct better. The eta = 0 DDIM steps are written from ᾱ here
    (``ddim_step``), not taken from a diffusers scheduler, so that the timestep grid and the
    inversion direction are exactly the paper's. Returns (N,); t_sec/k + 2 queries per sample.
    """
    unet, alphas = model.unet, _alphas(model)
    grid = list(range(0, t_sec, k)) + [t_sec]
    up = t_sec + k
    out = np.zeros(len(samples))
    with _eval_mode(unet):
        for sl in _batches(len(samples)):
            x, c = samples.latents[sl].float(), samples.cond[sl]
            for t_from, t_to in zip(grid[:-1], grid[1:]):
                x = ddim_step(x, _eps(unet, x, t_from, c), float(alphas[t_from]), float(alphas[t_to]))
            x_up = ddim_step(x, _eps(unet, x, t_sec, c), float(alphas[t_sec]), float(alphas[up]))
            x_back = ddim_step(x_up, _eps(unet, x_up, up, c), float(alphas[up]), float(alphas[t_sec]))
            out[sl] = -(x_back - x).pow(2).flatten(1).sum(1).double().numpy()
    return out


@torch.no_grad()
def score_norm_scores(model: DiffusionModel, samples: SampleSet, timesteps: Sequence[int], p: float = 4.0) -> np.ndarray:
    """SimA (Rao et al., arXiv 2509.25003): −‖ε_θ(x_0, t)‖_p^p at the clean latent, no added noise.

    The denoiser points toward a kernel-weighted mean of nearby training samples, so its norm is
    small on a training sample. One query per t; returns (len(timesteps), N).
    """
    unet = model.unet
    out = np.zeros((len(timesteps), len(samples)))
    with _eval_mode(unet):
        for sl in _batches(len(samples)):
            x0, c = samples.latents[sl].float(), samples.cond[sl]
            for i, t in enumerate(timesteps):
                out[i, sl] = -_eps(unet, x0, t, c).abs().pow(p).flatten(1).sum(1).double().numpy()
    return out


def lora_parameters(unet) -> list[tuple[str, torch.nn.Parameter]]:
    params = [(n, p) for n, p in unet.named_parameters() if LORA_A in n or LORA_B in n]
    if not params:
        raise ValueError("the UNet has no LoRA parameters (names with lora_A / lora_B) for the gradient attack")
    return params


def gradient_norm_features(
    model: DiffusionModel, samples: SampleSet, timesteps: Sequence[int], seed: int, progress: bool = True
) -> np.ndarray:
    """GSA1 features (Pang et al., arXiv 2308.06405): per-LoRA-tensor ‖∇ L(x_0)‖₂ → (N, #tensors).

    L(x_0) is the denoising loss averaged over the K given timesteps, with ε seeded per sample,
    so one backward per sample gives one gradient (GSA1, not GSA2's per-t gradients). Only the
    LoRA factors (each lora_A and lora_B tensor is one feature) are differentiated; gradients
    come from ``torch.autograd.grad``, so no ``.grad`` is ever written, and every
    ``requires_grad`` flag is restored afterwards.
    """
    unet, alphas = model.unet, _alphas(model)
    params = lora_parameters(unet)
    wanted = {n for n, _ in params}
    flags = {n: p.requires_grad for n, p in unet.named_parameters()}
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn((len(samples), len(timesteps), *samples.latents.shape[1:]), generator=gen)
    ts = torch.tensor([int(t) for t in timesteps], dtype=torch.long)
    a = alphas[ts].float().view(-1, *([1] * (samples.latents.dim() - 1)))
    out = np.zeros((len(samples), len(params)))
    try:
        for n, p in unet.named_parameters():
            p.requires_grad_(n in wanted)
        with _eval_mode(unet), torch.enable_grad():
            device, dtype = _device(unet)
            bar = tqdm(range(len(samples)), desc="gradient-norm", unit="sample", leave=False, mininterval=2.0,
                       disable=not progress or len(samples) * len(ts) < 2000)
            for i in bar:
                x0 = samples.latents[i].float().expand(len(ts), *samples.latents.shape[1:])
                xt = a.sqrt() * x0 + (1 - a).sqrt() * noise[i]
                cond = samples.cond[i].expand(len(ts), *samples.cond.shape[1:])
                pred = unet(xt.to(device, dtype), ts.to(device), encoder_hidden_states=cond.to(device, dtype)).sample
                loss = (pred.float() - noise[i].to(device)).pow(2).mean()
                grads = torch.autograd.grad(loss, [p for _, p in params])
                out[i] = torch.stack([g.detach().float().norm() for g in grads]).cpu().double().numpy()
    finally:
        for n, p in unet.named_parameters():
            p.requires_grad_(flags[n])
    return out


# ---------------------------------------------------------------- attacks (the protocol)


def _oriented(aucs: Sequence[float], from_aux: bool) -> tuple[int, float]:
    """Index of the best aux AUC and the sign that orients the statistic (+1: the paper's)."""
    strength = [max(a, 1.0 - a) if from_aux else a for a in aucs]
    best = int(np.argmax(strength))  # ties: the first (smallest listed) t
    return best, (-1.0 if from_aux and aucs[best] < 0.5 else 1.0)


def _timestep_attack(
    table: Callable[[SampleSet, Sequence[int]], np.ndarray], sets: AttackSets, timesteps: Sequence[int], from_aux: bool
) -> AttackResult:
    """Pick t (and, if ``from_aux``, the sign) by aux AUC, then the threshold on aux; only then
    score D_te, at that t alone."""
    aux, aux_member = _labelled(sets.member_aux, sets.nonmember_aux)
    aux_table = table(aux, timesteps)
    aucs = [_auc(row, aux_member) for row in aux_table]
    best, sign = _oriented(aucs, from_aux)
    t = timesteps[best]
    threshold = best_threshold(sign * aux_table[best], aux_member)
    test, test_member = _labelled(sets.member_test, sets.nonmember_test)
    test_scores = sign * table(test, [t])[0]
    per_t = {f"aux_auc_t{ts}": a for ts, a in zip(timesteps, aucs)}  # in the paper's orientation
    oriented = aucs[best] if sign > 0 else 1.0 - aucs[best]
    return _result(test_scores, test_member, threshold, t=float(t), sign=sign, aux_auc=oriented, **per_t)


def pia_attack(model: DiffusionModel, sets: AttackSets, timesteps: Sequence[int], p: float = 4.0,
               sign_from_aux: bool = True, key: str = "evaluation.pia_timesteps") -> AttackResult:
    """PIA (Kong et al., ICLR 2024) with t picked on D_aux, not the repo's best-on-test t."""
    ts = check_timesteps(key, timesteps, _num_timesteps(model))
    res = _timestep_attack(lambda s, t: pia_scores(model, s, t, p), sets, ts, sign_from_aux)
    res.details["p"] = float(p)
    return res


def score_norm_attack(model: DiffusionModel, sets: AttackSets, timesteps: Sequence[int], p: float = 4.0,
                      sign_from_aux: bool = True, key: str = "evaluation.score_norm_timesteps") -> AttackResult:
    """SimA (Rao et al., arXiv 2509.25003) with t picked on D_aux."""
    ts = check_timesteps(key, timesteps, _num_timesteps(model))
    res = _timestep_attack(lambda s, t: score_norm_scores(model, s, t, p), sets, ts, sign_from_aux)
    res.details["p"] = float(p)
    return res


def secmi_attack(model: DiffusionModel, sets: AttackSets, t_sec: int = 100, k: int = 10,
                 sign_from_aux: bool = True) -> AttackResult:
    """SecMI_stat (Duan et al., ICML 2023): t-error thresholded on D_aux."""
    n = _num_timesteps(model)
    if k < 1 or t_sec < k or t_sec + k >= n:
        raise ValueError(
            f"evaluation.secmi_t = {t_sec} and evaluation.secmi_k = {k} need 1 <= k <= secmi_t and "
            f"secmi_t + secmi_k < the scheduler's num_train_timesteps = {n}"
        )
    aux, aux_member = _labelled(sets.member_aux, sets.nonmember_aux)
    aux_scores = secmi_scores(model, aux, t_sec, k)
    aux_auc = _auc(aux_scores, aux_member)
    _, sign = _oriented([aux_auc], sign_from_aux)
    threshold = best_threshold(sign * aux_scores, aux_member)
    test, test_member = _labelled(sets.member_test, sets.nonmember_test)
    return _result(sign * secmi_scores(model, test, t_sec, k), test_member, threshold, t=float(t_sec), k=float(k),
                   sign=sign, aux_auc=aux_auc if sign > 0 else 1 - aux_auc)


def _gsa_classifier(seed: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000, random_state=seed % 2**32))


def _log_norms(features: np.ndarray) -> np.ndarray:
    """Gradient norms span orders of magnitude; a linear classifier sees them on a log scale."""
    return np.log(np.maximum(features, 1e-30))


def gradient_norm_attack(
    model: DiffusionModel, sets: AttackSets, timesteps: Sequence[int], seed: int, progress: bool = True,
    key: str = "evaluation.gradient_norm_timesteps",
) -> AttackResult:
    """GSA1-style (Pang et al., arXiv 2308.06405): logistic regression on log LoRA-gradient norms.

    Trained on D_aux (the paper trains on shadow models; here the labelled aux samples of the
    target itself play that role). Its threshold is chosen on out-of-fold aux scores (stratified
    k-fold cross-validation), then the classifier refitted on all of D_aux scores D_te once.
    """
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    ts = check_timesteps(key, timesteps, _num_timesteps(model))
    aux, aux_member = _labelled(sets.member_aux, sets.nonmember_aux)
    folds = min(_CV_FOLDS, int(aux_member.sum()), int((~aux_member).sum()))
    if folds < 2:
        raise ValueError("the gradient-norm attack needs at least 2 members and 2 non-members in D_aux")
    x_aux = _log_norms(gradient_norm_features(model, aux, ts, seed, progress))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed % 2**32)
    oof = cross_val_predict(_gsa_classifier(seed), x_aux, aux_member, cv=cv, method="decision_function")
    threshold = best_threshold(oof, aux_member)
    clf = _gsa_classifier(seed).fit(x_aux, aux_member)
    test, test_member = _labelled(sets.member_test, sets.nonmember_test)
    x_test = _log_norms(gradient_norm_features(model, test, ts, seed + 1, progress))
    return _result(clf.decision_function(x_test), test_member, threshold, aux_cv_auc=_auc(oof, aux_member),
                   n_features=float(x_aux.shape[1]), n_timesteps=float(len(ts)), cv_folds=float(folds))


def run_diffusion_attacks(
    model: DiffusionModel, sets: AttackSets, cfg: EvaluationConfig, seed: int, want: Sequence[str]
) -> dict[str, AttackResult]:
    """The diffusion attacks among ``want``, with ``cfg``'s hyper-parameters."""
    unknown = [a for a in want if a not in DIFFUSION]
    if unknown:
        raise ValueError(f"unknown diffusion attacks {unknown}; choose from {list(DIFFUSION)}")
    out: dict[str, AttackResult] = {}
    from_aux = cfg.diffusion_attack_sign == "from-aux"
    if PIA in want:
        out[PIA] = pia_attack(model, sets, cfg.pia_timesteps, sign_from_aux=from_aux)
    if SECMI in want:
        out[SECMI] = secmi_attack(model, sets, cfg.secmi_t, cfg.secmi_k, sign_from_aux=from_aux)
    if SCORE_NORM in want:
        out[SCORE_NORM] = score_norm_attack(model, sets, cfg.score_norm_timesteps, cfg.score_norm_p, sign_from_aux=from_aux)
    if GRADIENT_NORM in want:
        out[GRADIENT_NORM] = gradient_norm_attack(model, sets, cfg.gradient_norm_timesteps, seed)
    return out
