"""Membership-leakage metrics on attack scores (higher score = "member").

ASR is the attack's accuracy on D_te at its chosen threshold (Choquette-Choo et al. 2021, as
in the SMP-LoRA paper); AUC is reported raw and as |AUC - 0.5| / 0.5, the paper's column, since
a defence that inverts the signal leaks as much as one that keeps it. TPR at a fixed FPR is the
largest TPR on the ROC curve whose FPR does not exceed the target (Carlini et al. 2022), and
only where it can be measured: with n non-members the smallest non-zero FPR is 1/n, so TPR at
FPR x is reported only when n >= 1/x (otherwise None, with the reason in ``unmeasurable``). The
AUC gets a stratified percentile-bootstrap confidence interval.

TPR read off the test ROC uses the threshold that the test non-members themselves put at FPR x:
an oracle no attacker has. The ``*_aux`` keys are what an attacker gets: the threshold is fixed
where the *aux* non-members' FPR is x, then applied to D_te, which yields a TPR and a realised
FPR (``fpr_at_*_aux``) that may differ from x (CopyMark: AUC 1.0 with 51 % FPR at a transferred
threshold).
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

LOW_FPRS = {"tpr_at_0.1pct_fpr": 0.001, "tpr_at_1pct_fpr": 0.01, "tpr_at_5pct_fpr": 0.05}  # test ROC (oracle)
AUX_FPRS = {f"{k}_aux": v for k, v in LOW_FPRS.items()}  # threshold fixed on aux, applied to D_te
REALISED_FPR = {k: "fpr" + k.removeprefix("tpr") for k in AUX_FPRS}  # its FPR on D_te
LEAKAGE_KEYS = (
    "auc",
    "auc_dev",
    "auc_ci_low",
    "auc_ci_high",
    "asr",
    *LOW_FPRS,
    *AUX_FPRS,
    *REALISED_FPR.values(),
    "n_members",
    "n_nonmembers",
    "n_aux_nonmembers",
    "unmeasurable",
)
KEY_MEANINGS = {
    **{k: f"TPR at {v:.1%} FPR read off the test ROC (the threshold is an oracle's)" for k, v in LOW_FPRS.items()},
    **{k: f"TPR on D_te at the threshold where the aux non-members' FPR is {v:.1%}" for k, v in AUX_FPRS.items()},
    **{v: f"the FPR on D_te at that aux threshold ({k})" for k, v in REALISED_FPR.items()},
}
BOOTSTRAP_RESAMPLES = 1000
CI_LEVEL = 0.95


def _check(scores: np.ndarray, is_member: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64).ravel()
    is_member = np.asarray(is_member).astype(bool).ravel()
    if scores.shape != is_member.shape:
        raise ValueError(f"{len(scores)} scores but {len(is_member)} labels")
    if is_member.all() or not is_member.any():
        raise ValueError("leakage metrics need both members and non-members")
    if not np.isfinite(scores).all():
        raise ValueError("attack scores contain NaN or inf")
    return scores, is_member


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, target: float) -> float:
    """Largest TPR among ROC points with FPR <= target (0 if none)."""
    ok = np.asarray(fpr) <= target + 1e-12
    return float(np.max(np.asarray(tpr)[ok])) if ok.any() else 0.0


def best_threshold(scores: np.ndarray, is_member: np.ndarray) -> float:
    """The threshold (predict member iff score >= it) with the best balanced accuracy on these scores.

    Candidates are midpoints between sorted distinct scores plus the two ends, so the choice
    does not sit on a training sample's exact score.
    """
    scores, is_member = _check(scores, is_member)
    distinct = np.unique(scores)
    candidates = np.concatenate([[distinct[0] - 1.0], (distinct[:-1] + distinct[1:]) / 2, [distinct[-1] + 1.0]])
    pred = scores[None, :] >= candidates[:, None]
    tpr = (pred & is_member).sum(1) / is_member.sum()
    tnr = (~pred & ~is_member).sum(1) / (~is_member).sum()
    return float(candidates[int(np.argmax(tpr + tnr))])


def attack_success_rate(scores: np.ndarray, is_member: np.ndarray, threshold: float) -> float:
    scores, is_member = _check(scores, is_member)
    return float(np.mean((scores >= threshold) == is_member))


def auc_interval(
    scores: np.ndarray,
    is_member: np.ndarray,
    resamples: int = BOOTSTRAP_RESAMPLES,
    level: float = CI_LEVEL,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap of the AUC, resampling members and non-members separately (seeded)."""
    scores, is_member = _check(scores, is_member)
    rng = np.random.default_rng(seed)
    pos, neg = scores[is_member], scores[~is_member]
    from scipy.stats import rankdata

    aucs = np.empty(resamples)
    n_p, n_n = len(pos), len(neg)
    for i in range(resamples):
        both = np.concatenate([rng.choice(pos, n_p), rng.choice(neg, n_n)])
        ranks = rankdata(both)  # Mann-Whitney: ties get average ranks, i.e. count half
        aucs[i] = (ranks[:n_p].sum() - n_p * (n_p + 1) / 2) / (n_p * n_n)
    alpha = (1 - level) / 2
    return float(np.quantile(aucs, alpha)), float(np.quantile(aucs, 1 - alpha))


def aux_fpr_threshold(aux_nonmember_scores: np.ndarray, target: float) -> float:
    """The lowest threshold at which at most a ``target`` fraction of the aux non-members score >= it."""
    neg = np.sort(np.asarray(aux_nonmember_scores, dtype=np.float64))[::-1]
    allowed = int(np.floor(target * len(neg) + 1e-9))  # how many non-members may lie at or above it
    return float(np.nextafter(neg[allowed], np.inf)) if allowed < len(neg) else float(-np.inf)


def leakage_metrics(
    scores: np.ndarray,
    is_member: np.ndarray,
    threshold: float,
    seed: int = 0,
    aux: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict:
    """Every leakage number for one attack on one target, with its sample sizes.

    ``aux`` = (scores, is_member) of the aux samples the attack calibrated on (oriented like
    ``scores``); without it the aux-threshold TPRs are None. A TPR at an FPR the non-members
    cannot resolve is None too, and ``unmeasurable`` says why.
    """
    scores, is_member = _check(scores, is_member)
    fpr, tpr, _ = roc_curve(is_member, scores)
    auc = float(roc_auc_score(is_member, scores))
    low, high = auc_interval(scores, is_member, seed=seed)
    n_non = int((~is_member).sum())
    out: dict = {
        "auc": auc,
        "auc_dev": abs(auc - 0.5) / 0.5,
        "auc_ci_low": low,
        "auc_ci_high": high,
        "asr": attack_success_rate(scores, is_member, threshold),
    }
    unmeasurable = {}
    for key, target in LOW_FPRS.items():
        if n_non * target >= 1 - 1e-9:
            out[key] = tpr_at_fpr(fpr, tpr, target)
        else:
            out[key] = None
            unmeasurable[key] = f"{n_non} non-members resolve FPR only down to 1/{n_non} = {1 / n_non:.3g} > {target:g}"
    n_aux_non = None
    if aux is None:
        for key in AUX_FPRS:
            out[key] = out[REALISED_FPR[key]] = None
            unmeasurable[key] = "this attack keeps no held-out aux scores to fix a threshold on"
    else:
        aux_scores, aux_member = _check(*aux)
        aux_neg = aux_scores[~aux_member]
        n_aux_non = len(aux_neg)
        for key, target in AUX_FPRS.items():
            if n_aux_non * target >= 1 - 1e-9:
                tau = aux_fpr_threshold(aux_neg, target)
                out[key] = float(np.mean(scores[is_member] >= tau))
                out[REALISED_FPR[key]] = float(np.mean(scores[~is_member] >= tau))
            else:
                out[key] = out[REALISED_FPR[key]] = None
                unmeasurable[key] = (
                    f"{n_aux_non} aux non-members fix a threshold only down to FPR 1/{n_aux_non} = "
                    f"{1 / n_aux_non:.3g} > {target:g}"
                )
    out.update(
        n_members=int(is_member.sum()), n_nonmembers=n_non, n_aux_nonmembers=n_aux_non, unmeasurable=unmeasurable
    )
    return out


def roc_points(scores: np.ndarray, is_member: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores, is_member = _check(scores, is_member)
    fpr, tpr, _ = roc_curve(is_member, scores)
    return fpr, tpr
