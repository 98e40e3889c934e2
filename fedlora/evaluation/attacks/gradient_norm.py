"""GSA1-style white-box LoRA-gradient norms (Pang et al., arXiv 2308.06405).

The honest-but-curious server's view: it holds each client's adapter, so it can differentiate
the diffusion loss of any sample through it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ...device import to_host
from ...models.lora import LORA_A, LORA_B
from ...registry import ATTACKS
from ..leakage import best_threshold
from .base import AttackContext, AttackResult, AttackSets, SampleSet, attack_result, labelled
from .diffusion import DiffusionModel, alphas, auc, check_timesteps, device_of, eval_mode, num_timesteps

CV_FOLDS = 5
SEED_OFFSET = 11  # this attack's own ε draws: the audit seed + 11


def lora_parameters(unet: Any) -> list[tuple[str, torch.nn.Parameter]]:
    params = [(n, p) for n, p in unet.named_parameters() if LORA_A in n or LORA_B in n]
    if not params:
        raise ValueError("the UNet has no LoRA parameters (names with lora_A / lora_B) for the gradient attack")
    return params


def gradient_norm_features(
    model: DiffusionModel, samples: SampleSet, timesteps: Sequence[int], seed: int, progress: bool = True
) -> np.ndarray:
    """GSA1 features: per-LoRA-tensor ‖∇ L(x_0)‖₂ → (N, #tensors).

    L(x_0) is the denoising loss averaged over the K given timesteps, with ε seeded per sample,
    so one backward per sample gives one gradient (GSA1, not GSA2's per-t gradients). Only the
    LoRA factors (each lora_A and lora_B tensor is one feature) are differentiated; gradients
    come from ``torch.autograd.grad``, so no ``.grad`` is ever written, and every
    ``requires_grad`` flag is restored afterwards.
    """
    unet, a_bar = model.unet, alphas(model)
    params = lora_parameters(unet)
    wanted = {n for n, _ in params}
    flags = {n: p.requires_grad for n, p in unet.named_parameters()}
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn((len(samples), len(timesteps), *samples.latents.shape[1:]), generator=gen)
    ts = torch.tensor([int(t) for t in timesteps], dtype=torch.long)
    a = a_bar[ts].float().view(-1, *([1] * (samples.latents.dim() - 1)))
    out = np.zeros((len(samples), len(params)))
    device, dtype = device_of(unet)
    a, ts = a.to(device), ts.to(device)
    try:
        for n, p in unet.named_parameters():
            p.requires_grad_(n in wanted)
        with eval_mode(unet), torch.enable_grad():
            bar = tqdm(
                range(len(samples)),
                desc="gradient-norm",
                unit="sample",
                leave=False,
                mininterval=2.0,
                disable=not progress or len(samples) * len(ts) < 2000,
            )
            for i in bar:
                eps = noise[i].to(device)  # drawn on the CPU: the same ε on any device
                x0 = samples.latents[i].float().to(device).expand(len(ts), *samples.latents.shape[1:])
                xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
                cond = samples.cond[i].expand(len(ts), *samples.cond.shape[1:])
                pred = unet(xt.to(dtype), ts, encoder_hidden_states=cond.to(device, dtype)).sample
                loss = (pred.float() - eps).pow(2).mean()
                grads = torch.autograd.grad(loss, [p for _, p in params])
                out[i] = to_host(torch.stack([g.detach().float().norm() for g in grads])).double().numpy()
    finally:
        for n, p in unet.named_parameters():
            p.requires_grad_(flags[n])
    return out


def _classifier(seed: int) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000, random_state=seed % 2**32))


def _log_norms(features: np.ndarray) -> np.ndarray:
    """Gradient norms span orders of magnitude; a linear classifier sees them on a log scale."""
    return np.log(np.maximum(features, 1e-30))


def gradient_norm_attack(
    model: DiffusionModel,
    sets: AttackSets,
    timesteps: Sequence[int],
    seed: int,
    progress: bool = True,
    key: str = "evaluation.gradient_norm_timesteps",
) -> AttackResult:
    """Logistic regression on log LoRA-gradient norms, trained on D_aux.

    The paper trains on shadow models; here the labelled aux samples of the target itself play
    that role. The threshold is chosen on out-of-fold aux scores (stratified k-fold
    cross-validation), then the classifier refitted on all of D_aux scores D_te once.
    """
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    ts = check_timesteps(key, timesteps, num_timesteps(model))
    aux, aux_member = labelled(sets.member_aux, sets.nonmember_aux)
    folds = min(CV_FOLDS, int(aux_member.sum()), int((~aux_member).sum()))
    if folds < 2:
        raise ValueError("the gradient-norm attack needs at least 2 members and 2 non-members in D_aux")
    x_aux = _log_norms(gradient_norm_features(model, aux, ts, seed, progress))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed % 2**32)
    oof = cross_val_predict(_classifier(seed), x_aux, aux_member, cv=cv, method="decision_function")
    threshold = best_threshold(oof, aux_member)
    clf = _classifier(seed).fit(x_aux, aux_member)
    test, test_member = labelled(sets.member_test, sets.nonmember_test)
    x_test = _log_norms(gradient_norm_features(model, test, ts, seed + 1, progress))
    return attack_result(
        clf.decision_function(x_test),
        test_member,
        threshold,
        aux=(oof, aux_member),
        aux_cv_auc=auc(oof, aux_member),
        n_features=float(x_aux.shape[1]),
        n_timesteps=float(len(ts)),
        cv_folds=float(folds),
    )


@ATTACKS.register(
    "gradient-norm",
    reference="Pang et al., arXiv 2308.06405 (GSA)",
    description="white box: logistic regression (fit on D_aux) on the per-LoRA-tensor norms of the "
    "diffusion-loss gradient — what an honest-but-curious server holding an update can "
    "compute",
)
def gradient_norm(ctx: AttackContext) -> AttackResult:
    return gradient_norm_attack(ctx.target, ctx.sets, ctx.cfg.gradient_norm_timesteps, ctx.seed + SEED_OFFSET)
