"""Does a view leak? The strongest attack's AUC with an interval that accounts for picking it.

Per audited view (the global model; each client's last update) the best attack is the one
whose test AUC is farthest from 0.5. Picking the best of k attacks (and, for clients, of m
clients) is a multiple comparison, so the verdict uses a Bonferroni-corrected bootstrap
interval (level 1 − 0.05 / comparisons) next to the plain 95 % one: a view *leaks* when the
corrected interval excludes 0.5.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .attacks import AttackResult
from .leakage import CI_LEVEL, auc_interval

MAX_RESAMPLES = 20000


def _resamples(level: float) -> int:
    """Enough bootstrap resamples that the tail quantile rests on about ten of them."""
    return int(min(MAX_RESAMPLES, max(1000, 10 / ((1 - level) / 2))))


def view_verdict(results: Mapping[str, AttackResult], comparisons: int, seed: int = 0) -> dict[str, Any]:
    best = max(results, key=lambda a: abs(results[a].metrics["auc"] - 0.5))
    r, m = results[best], results[best].metrics
    level = 1 - (1 - CI_LEVEL) / comparisons
    if r.scores is None or r.is_member is None:
        raise ValueError(f"attack {best!r} returned no test scores to bootstrap")
    low, high = auc_interval(r.scores, r.is_member, resamples=_resamples(level), level=level, seed=seed)
    return {
        "best_attack": best,
        "attacks": len(results),
        "auc": m["auc"],
        "auc_ci": [m["auc_ci_low"], m["auc_ci_high"]],
        "asr": m["asr"],
        "n_members": m["n_members"],
        "n_nonmembers": m["n_nonmembers"],
        "comparisons": comparisons,
        "corrected_level": level,
        "auc_ci_corrected": [low, high],
        "leaks": not low <= 0.5 <= high,
        "leaks_uncorrected": not m["auc_ci_low"] <= 0.5 <= m["auc_ci_high"],
    }


def run_verdict(
    global_results: Mapping[str, AttackResult], client_results: Mapping[str, Mapping[str, AttackResult]]
) -> dict[str, Any]:
    """summary.json's ``privacy.verdict``: the global model's and each client update's."""
    out: dict[str, Any] = {}
    if global_results:
        out["global"] = view_verdict(global_results, len(global_results))
    if client_results:
        comparisons = sum(len(r) for r in client_results.values())
        clients = {cid: view_verdict(res, comparisons) for cid, res in client_results.items() if res}
        out["clients"] = clients
        out["clients_leaking"] = sum(v["leaks"] for v in clients.values())
        out["clients_leaking_uncorrected"] = sum(v["leaks_uncorrected"] for v in clients.values())
    return out
