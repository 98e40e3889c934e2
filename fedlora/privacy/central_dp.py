"""Central (user-level) DP for FedAvg of LoRA factors: Flower's fixed-clipping wrappers + RDP accountant.

Each sampled client's update (new − old adapter, A and B flattened together) is clipped to
``privacy.dp_max_grad_norm``; the server adds N(0, (σ·C / m)²) to the mean of the m updates
(McMahan et al. 2018, arXiv 1710.06963). Flower's ``RdpAccountant`` (Google's dp-accounting)
composes one Gaussian release per round; Flower's wrapper accounts only without sampling
amplification and for uniform weights, so ε is the no-amplification bound of add-or-remove-one
neighbouring client populations.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from ..config import ExperimentConfig

ACCOUNTANT_NAME = "flwr RdpAccountant (dp-accounting RDP), no sampling amplification, add-or-remove-one client"


def make_accountant(delta: float, population: int):
    from flwr.supercore.privacy_accounting import NeighboringRelation, PrivacyConfig, SamplingMethod
    from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

    return RdpAccountant(
        PrivacyConfig(
            target_delta=delta,
            population_size=population,
            neighboring_relation=NeighboringRelation("add-or-remove-one"),
            sampling_method=SamplingMethod("no-amplification"),
        )
    )


def _partition(message) -> int:
    from fedlora.protocol import METRICS, PARTITION_ID

    return -1 if message.has_error() else int(message.content[METRICS][PARTITION_ID])


class CentralDp:
    """Builds the wrapped strategy and reports ε per round and at the end."""

    def __init__(self, cfg: ExperimentConfig):
        p = cfg.privacy
        self.noise_multiplier = p.dp_noise_multiplier
        self.clipping_norm = p.dp_max_grad_norm
        self.clipping = p.dp_clipping
        self.delta = p.dp_delta
        self.population = cfg.federation.num_clients
        self.accountant = make_accountant(self.delta, self.population)
        self.wrapper = None
        # Flower draws the noise from numpy's global generator: seed it for reproducible runs.
        np.random.seed(cfg.run.seed)

    def wrap(self, strategy):
        from flwr.serverapp.strategy import (
            DifferentialPrivacyClientSideFixedClipping,
            DifferentialPrivacyServerSideFixedClipping,
        )

        base = DifferentialPrivacyServerSideFixedClipping if self.clipping == "server" else DifferentialPrivacyClientSideFixedClipping

        class SortedReplies(base):  # the mean is then summed in client order: same seed, same numbers
            def aggregate_train(self, server_round: int, replies: Iterable):
                replies = sorted(replies, key=_partition)
                failures = [str(m.error.reason) for m in replies if m.has_error()]
                self.strategy.rounds.setdefault(server_round, {})["failures"] = failures
                return super().aggregate_train(server_round, replies)

        self.wrapper = SortedReplies(
            strategy, self.noise_multiplier, self.clipping_norm, strategy.num_sampled, accountant=self.accountant
        )
        return self.wrapper

    def epsilon(self) -> float:
        spent = self.accountant.get_privacy_spent()
        return float(spent.epsilon) if spent.num_releases else 0.0

    def round_metrics(self) -> dict[str, float]:
        return {"dp_epsilon": self.epsilon(), "dp_releases": float(self.accountant.get_privacy_spent().num_releases)}

    def summary(self) -> dict[str, Any]:
        return {
            "mechanism": "dp-fedavg",
            "level": "user (client)",
            "clipping": self.clipping,
            "noise_multiplier": self.noise_multiplier,
            "clipping_norm": self.clipping_norm,
            "noise_std": self.noise_multiplier * self.clipping_norm / (self.wrapper.num_sampled_clients if self.wrapper else 1),
            "epsilon": self.epsilon(),
            "delta": self.delta,
            "releases": int(self.accountant.get_privacy_spent().num_releases),
            "accountant": ACCOUNTANT_NAME,
            "formal": True,
        }
