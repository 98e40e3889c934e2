"""The membership audit where the data is: each silo attacks the global model on its own splits.

In deployment with per-silo data (``data.dataset = "silo"``) the server holds no members or
non-members, so it cannot audit. After the last round it sends the final global model to every
silo; each runs the configured attacks (``evaluation.attacks``, the same code as the server-side
audit) on its own D_aux / D_te and replies with metrics only; the server keeps them per silo and
summarises them.

What the metrics reveal: an attack's AUC, ASR and TPR at low FPR on that silo's held-out sets,
and the sizes of those sets. They say how well the global model tells that silo's members from
its non-members, so an AUC far from 0.5 tells the server (and whoever reads the report) that the
model memorised that silo's data. They name no sample and carry no image, caption or score. They
do depend on the members' content, so no DP mechanism's ε covers them: under a DP mode that
restricts what leaves a client (``DpMode.released_metrics``) a silo withholds them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..config import ExperimentConfig
from ..data.silo import SiloData
from ..models.lora import ModelView
from ..privacy.dp import build_dp_mode
from ..protocol import AUDIT_PREFIX, AUDIT_WITHHELD
from .attacks import run_attacks
from .membership import AuditModels, attack_sets

UNMEASURABLE = "unmeasurable"  # an attack's metrics entry: metric -> why this sample size cannot resolve it

REVEALS = (
    "per silo: each attack's leakage metrics on that silo's own held-out members and non-members, and the "
    "set sizes; no sample id, image, caption or per-sample score leaves a silo"
)


def withholds_audit(cfg: ExperimentConfig) -> bool:
    """A DP mode that limits what leaves a client keeps the audit in: its ε does not cover it."""
    return build_dp_mode(cfg).released_metrics is not None


def audit_silo(
    cfg: ExperimentConfig, runtime: Any, silo: SiloData, view: ModelView, partition: int
) -> tuple[dict[str, float], dict[str, str]]:
    """Flat metrics ``audit/<attack>/<metric>`` (NaN: not measurable at this sample size) and the reasons
    ``<attack>/<metric>`` -> text for those; attack details (thresholds: loss values) stay on the silo."""
    if withholds_audit(cfg):
        return {AUDIT_WITHHELD: 1}, {}
    if not cfg.evaluation.attacks:
        return {}, {}
    models = AuditModels(runtime, cfg)
    runtime.show(view)
    sets = attack_sets(runtime, silo.dataset, silo.splits, [0])
    seed = cfg.run.seed * 1000 + 17 + partition
    results = run_attacks(
        runtime, sets, cfg.evaluation, seed, f"silo {partition} audit", models.reference, models.shadow
    )
    out: dict[str, float] = {}
    notes: dict[str, str] = {}
    for attack, result in results.items():
        for metric, value in result.metrics.items():
            if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
                out[f"{AUDIT_PREFIX}{attack}/{metric}"] = math.nan if value is None else float(value)
            elif metric == UNMEASURABLE and isinstance(value, Mapping):
                notes.update({f"{attack}/{k}": str(v) for k, v in value.items()})
    return out, notes


def silo_audits(
    replies: Mapping[int, Mapping[str, Any]], notes: Mapping[int, Mapping[str, Any]] | None = None
) -> dict[int, dict[str, dict[str, Any]]]:
    """partition -> attack -> metrics as the server-side audit writes them (None: not measurable, with
    its reason under ``unmeasurable``; counts as ints), from each silo's flat reply."""
    out: dict[int, dict[str, dict[str, Any]]] = {}
    for pid, metrics in replies.items():
        attacks: dict[str, dict[str, Any]] = {}
        for key, value in metrics.items():
            if key.startswith(AUDIT_PREFIX):
                attack, metric = key[len(AUDIT_PREFIX) :].split("/", 1)
                x = float(value)
                attacks.setdefault(attack, {})[metric] = (
                    None if math.isnan(x) else int(x) if metric.startswith("n_") and x.is_integer() else x
                )
        for key, reason in (notes or {}).get(pid, {}).items():
            attack, metric = str(key).split("/", 1)
            if attack in attacks:
                attacks[attack].setdefault(UNMEASURABLE, {})[metric] = str(reason)
        out[pid] = attacks
    return out


def summarise_silo_audits(
    audits: Mapping[int, Mapping[str, Mapping[str, Any]]], withheld: list[int], expected: int
) -> dict[str, Any]:
    """Per attack: the silos' AUCs (min, mean weighted by test-set size, max). A mean of AUCs is no AUC of
    the pooled sets; it is what the silos can report without pooling scores."""
    summary: dict[str, Any] = {}
    names = sorted({a for attacks in audits.values() for a in attacks})
    for attack in names:
        rows = [a[attack] for a in audits.values() if attack in a and a[attack].get("auc") is not None]
        if not rows:
            continue
        aucs = np.array([r["auc"] for r in rows])
        sizes = np.array([r.get("n_members", 0.0) + r.get("n_nonmembers", 0.0) for r in rows])
        weights = sizes if sizes.sum() > 0 else np.ones(len(rows))
        summary[attack] = {
            "auc_min": float(aucs.min()),
            "auc_mean": float(np.average(aucs, weights=weights)),
            "auc_max": float(aucs.max()),
            "silos": len(rows),
            "n_test": int(sizes.sum()),
        }
    return {
        "target": "global model",
        "audited_by": "silos",
        "silos_expected": expected,
        "silos_reported": sorted(audits),
        "withheld": sorted(withheld),
        "reveals": REVEALS,
        "attacks": summary,
    }
