"""Per-round denoising loss of the global model on fixed members and non-members.

The same samples and the same (t, eps) draws every round, so the curve moves only because
the adapter does; the member/non-member gap is the simplest leakage signal there is. ``round_calibrated_auc`` attacks
each round's global model (under secure aggregation: the decoded aggregate, all the server holds)
with the base-calibrated loss score, the loss under the first model tracked (round 0: the base,
B = 0) minus the loss now, on the same draws.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from ..config import ExperimentConfig
from ..data import Splits, load_dataset
from ..models.lora import ModelView


def pick_eval_ids(splits: Splits, k: int, seed: int) -> tuple[list[str], list[str]]:
    """Up to ``k`` members (from all clients) and as many non-members, seeded."""
    members = sorted(i for c in splits.clients for i in c.members)
    nonmembers = sorted(i for c in splits.clients for i in c.nonmembers)
    rng = np.random.default_rng([seed, 11])
    k = min(k, len(members), len(nonmembers))
    return (
        sorted(rng.choice(members, k, replace=False).tolist()),
        sorted(rng.choice(nonmembers, k, replace=False).tolist()),
    )


class LossTracker:
    def __init__(self, cfg: ExperimentConfig, runtime: Any, splits: Splits):
        self.cfg, self.runtime = cfg, runtime
        dataset = load_dataset(cfg.data)
        member_ids, nonmember_ids = pick_eval_ids(splits, cfg.evaluation.eval_members, cfg.run.seed)
        self.members = runtime.encode(dataset, member_ids)
        self.nonmembers = runtime.encode(dataset, nonmember_ids)
        self.reference: tuple[np.ndarray, np.ndarray] | None = None  # per-sample losses of the first model

    def __call__(self, view: ModelView) -> dict[str, float]:
        self.runtime.show(view)
        draws, seed = self.cfg.evaluation.loss_timesteps, self.cfg.run.seed + 101
        m = self.runtime.mean_loss(self.members, draws, seed)
        nm = self.runtime.mean_loss(self.nonmembers, draws, seed)
        if self.reference is None:
            self.reference = (np.asarray(m, dtype=np.float64), np.asarray(nm, dtype=np.float64))
        ref_m, ref_nm = self.reference
        scores = np.concatenate([ref_m - np.asarray(m), ref_nm - np.asarray(nm)])
        labels = np.r_[np.ones(len(m)), np.zeros(len(nm))]
        return {
            "round_calibrated_auc": float(roc_auc_score(labels, scores)),
            "member_loss": float(m.mean()),
            "nonmember_loss": float(nm.mean()),
            "loss_gap": float(nm.mean() - m.mean()),
            "n_eval_members": len(m),
            "n_eval_nonmembers": len(nm),
        }
