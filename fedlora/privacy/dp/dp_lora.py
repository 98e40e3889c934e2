"""Sample-level DP-SGD on each client's LoRA factors (Opacus), accounted per client across rounds."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from ...config import ExperimentConfig
from ...errors import ConfigError
from ...registry import DP_MODES
from ...rounds import RoundLog, RoundRecord
from ...runtime import EncodedSamples, ModelRuntime
from ...training import TrainStats
from ..objectives import Objective, objective_class
from .base import TIMING_ONLY, DpMode, DpState

HISTORY = "rdp-history"  # the client's Opacus RDP history, kept in its DP state


def last_epsilons(rounds: list[RoundRecord]) -> dict[str, float]:
    """Each client's cumulative ε as of its latest reported round."""
    last: dict[str, float] = {}
    for r in rounds:
        for cid, metrics in (r.clients or {}).items():
            if "dp_epsilon" in metrics:
                last[cid] = float(metrics["dp_epsilon"])
    return last


@DP_MODES.register(
    "dp-lora",
    reference="Abadi et al., CCS 2016; Opacus (Yousefpour et al., 2021)",
    description="sample-level DP-SGD on each client's LoRA factors: per-sample clipping, Gaussian "
    "noise, Poisson sampling, Opacus RDP accountant per client",
)
class DpLora(DpMode):
    formal = True
    released_metrics = TIMING_ONLY | {"dp_epsilon", "dp_sample_rate", "dp_mean_batch"}

    @classmethod
    def validate(cls, cfg: ExperimentConfig) -> None:
        if cfg.privacy.dp_noise_multiplier <= 0:
            raise ConfigError("privacy.dp = 'dp-lora' needs privacy.dp_noise_multiplier > 0 for a finite epsilon")
        if objective_class(cfg.train.method).needs_aux:
            raise ConfigError(
                f"privacy.dp = 'dp-lora' with train.method = {cfg.train.method!r} is refused: the proxy attacker "
                "trains "
                "on member aux samples outside DP-SGD, so the LoRA update would depend on members through the attacker "
                "and the reported epsilon would not cover it. Use train.method = 'lora' (or dp-fedavg, whose "
                "client-level clipping covers everything a client sends)."
            )

    def train(
        self,
        runtime: ModelRuntime,
        members: EncodedSamples,
        objective: Objective,
        seed: int,
        state: Mapping[str, torch.Tensor] | None,
    ) -> tuple[TrainStats, DpState]:
        """Opacus DP-SGD instead of the objective's loss; the client's RDP history continues across rounds."""
        from ..dp_sgd import DpSgdSettings, history_from_array, history_to_array, train_lora_dp

        p, train = self.cfg.privacy, self.cfg.train
        history = history_from_array(state[HISTORY].numpy()) if state and HISTORY in state else None
        res = train_lora_dp(
            runtime.unet,
            runtime.scheduler,
            members.latents,
            members.cond,
            steps=train.local_steps,
            batch_size=train.batch_size,
            learning_rate=train.learning_rate,
            settings=DpSgdSettings(p.dp_noise_multiplier, p.dp_max_grad_norm, p.dp_delta),
            seed=seed,
            accountant_history=history,
        )
        losses = [x for x in res.losses if np.isfinite(x)] or [float("nan")]
        stats = TrainStats(
            num_examples=len(members),
            steps=res.steps,
            loss_first=losses[0],
            loss_last=losses[-1],
            loss_mean=float(np.mean(losses)),
            seconds=res.seconds,
            extra={
                "dp_epsilon": res.epsilon,
                "dp_sample_rate": res.sample_rate,
                "dp_mean_batch": float(np.mean(res.batch_sizes)),
            },
        )
        return stats, {HISTORY: torch.from_numpy(history_to_array(res.accountant_history))}

    def round_metrics(self, log: RoundLog, server_round: int) -> dict[str, float]:
        """The largest per-client ε so far."""
        if server_round == 0:
            return {}
        return {"dp_epsilon": max(last_epsilons(log.upto(server_round)).values(), default=0.0)}

    def summary(self, log: RoundLog) -> dict[str, Any]:
        """Each client's cumulative ε after its last round (Opacus RDP, Poisson rate b/n)."""
        last = last_epsilons(log.trained())
        p = self.cfg.privacy
        return {
            "mechanism": "dp-lora",
            "level": "sample (each client's members, per client)",
            "protects": "each training sample of each client (add-or-remove-one sample of that client's members)",
            "covers": "everything the client sends (its LoRA update every round: the server's view) and so the "
            "global model; each client's ε is separate (no composition across clients)",
            "noise_multiplier": p.dp_noise_multiplier,
            "max_grad_norm": p.dp_max_grad_norm,
            "sample_rate": self.cfg.train.batch_size / self.cfg.data.members_per_client,
            "epsilon": max(last.values()) if last else float("nan"),
            "epsilon_per_client": dict(sorted(last.items(), key=lambda kv: int(kv[0]))),
            "delta": p.dp_delta,
            "accountant": "opacus RDPAccountant, Poisson sampling, per-sample clipping",
            "formal": True,
        }
