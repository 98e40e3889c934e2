"""Membership-leakage metrics on attack scores (higher score = "member").

ASR is the attack's accuracy on D_te at its chosen threshold (Choquette-Choo et al. 2021, as
in the SMP-LoRA paper); AUC is reported raw and as |AUC - 0.5| / 0.5, the paper's column, since
a defence that inverts the signal leaks as much as one that keeps it. TPR at a fixed FPR is the
largest TPR on the ROC curve whose FPR does not exceed the target (Carlini et al. 2022).
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

LEAKAGE_KEYS = ("auc", "auc_dev", "asr", "tpr_at_1pct_fpr", "tpr_at_5pct_fpr", "n_members", "n_nonmembers")


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


def leakage_metrics(scores: np.ndarray, is_member: np.ndarray, threshold: float) -> dict[str, float]:
    """Every leakage number for one attack on one target, with its sample sizes."""
    scores, is_member = _check(scores, is_member)
    fpr, tpr, _ = roc_curve(is_member, scores)
    auc = float(roc_auc_score(is_member, scores))
    return {
        "auc": auc,
        "auc_dev": abs(auc - 0.5) / 0.5,
        "asr": attack_success_rate(scores, is_member, threshold),
        "tpr_at_1pct_fpr": tpr_at_fpr(fpr, tpr, 0.01),
        "tpr_at_5pct_fpr": tpr_at_fpr(fpr, tpr, 0.05),
        "n_members": int(is_member.sum()),
        "n_nonmembers": int((~is_member).sum()),
    }


def roc_points(scores: np.ndarray, is_member: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores, is_member = _check(scores, is_member)
    fpr, tpr, _ = roc_curve(is_member, scores)
    return fpr, tpr
