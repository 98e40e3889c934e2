"""What summary.json says about a run's DP mechanism: parameters, (ε, δ), and what ε means."""

from __future__ import annotations

import math
from typing import Any

from ..config import ExperimentConfig


def _last_epsilons(rounds: list[dict]) -> dict[str, float]:
    """Each client's cumulative ε as of its latest reported round."""
    last: dict[str, float] = {}
    for r in rounds:
        for cid, metrics in r.get("clients", {}).items():
            if "dp_epsilon" in metrics:
                last[cid] = float(metrics["dp_epsilon"])
    return last


def latest_local_epsilon(rounds: list[dict]) -> float:
    """The largest per-client ε so far (0 before any round)."""
    return max(_last_epsilons(rounds).values(), default=0.0)


def local_dp_summary(cfg: ExperimentConfig, rounds: list[dict]) -> dict[str, Any]:
    """dp-lora: each client's cumulative ε after its last round (Opacus RDP, Poisson rate b/n)."""
    last = _last_epsilons(rounds)
    p = cfg.privacy
    return {
        "mechanism": "dp-lora",
        "level": "sample (each client's members, per client)",
        "noise_multiplier": p.dp_noise_multiplier,
        "max_grad_norm": p.dp_max_grad_norm,
        "sample_rate": cfg.train.batch_size / cfg.data.members_per_client,
        "epsilon": max(last.values()) if last else float("nan"),
        "epsilon_per_client": dict(sorted(last.items(), key=lambda kv: int(kv[0]))),
        "delta": p.dp_delta,
        "accountant": "opacus RDPAccountant, Poisson sampling, per-sample clipping",
        "formal": True,
    }


def implicit_dp_summary(cfg: ExperimentConfig) -> dict[str, Any]:
    """arXiv 2409.17538's argument: with A ~ N(0, 1/r) frozen and B-gradient rows at norm C, the
    projection noise has std ≈ C/√r per row, which DP-SGD on a batch mean of b samples clipped at C
    reaches with noise multiplier σ ≈ b/√r. A heuristic: the noise reuses one A for every step and
    coordinate, and noise-free LoRA is not DP (arXiv 2601.21719) — never report it as ε."""
    r, b = cfg.model.lora_rank, cfg.train.batch_size
    return {
        "mechanism": "implicit-dp",
        "b_gradient_row_norm": cfg.privacy.dp_max_grad_norm,
        "rank": r,
        "batch_size": b,
        "equivalent_noise_multiplier_heuristic": b / math.sqrt(r),
        "formal": False,
        "note": "heuristic after arXiv 2409.17538 (sigma_eq ~ batch/sqrt(r)); not a formal (epsilon, delta) guarantee",
    }
