"""Central (user-level) DP for FedAvg of LoRA factors: Flower's fixed-clipping wrappers + RDP accountant.

Each sampled client's update (new − old adapter, A and B flattened together) is clipped to
``privacy.dp_max_grad_norm``; the server adds N(0, (σ·C / m)²) to the mean of the m updates
(McMahan et al. 2018, arXiv 1710.06963). Flower's ``RdpAccountant`` (Google's dp-accounting)
composes one Gaussian release per round; Flower's wrapper accounts only without sampling
amplification and for uniform weights, so ε is the no-amplification bound of add-or-remove-one
neighbouring client populations.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from ...config import ExperimentConfig
from ...errors import ConfigError
from ...protocol import METRICS, PARTITION_ID
from ...registry import DP_MODES
from ...rounds import RoundLog
from ...rules import rule_class, rules_with
from .base import TIMING_ONLY, DpMode

ACCOUNTANT_NAME = "flwr RdpAccountant (dp-accounting RDP), no sampling amplification, add-or-remove-one client"


def make_accountant(delta: float, population: int) -> Any:
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


def _partition(message: Any) -> int:
    return -1 if message.has_error() else int(message.content[METRICS][PARTITION_ID])


@DP_MODES.register(
    "dp-fedavg",
    reference="McMahan et al., ICLR 2018 (arXiv 1710.06963); Flower's DP wrappers",
    description="user-level central DP: each client's update clipped to C, Gaussian noise σ·C/m on "
    "the mean, RDP accountant (no sampling amplification)",
)
class DpFedAvg(DpMode):
    formal = True
    uses_flower_aggregation = True
    released_metrics = TIMING_ONLY

    def __init__(self, cfg: ExperimentConfig):
        super().__init__(cfg)
        p = cfg.privacy
        self.noise_multiplier = p.dp_noise_multiplier
        self.clipping_norm = p.dp_max_grad_norm
        self.clipping = p.dp_clipping
        self.delta = p.dp_delta
        self.population = cfg.federation.num_clients
        self.accountant = make_accountant(self.delta, self.population)
        self.wrapper: Any = None

    @classmethod
    def validate(cls, cfg: ExperimentConfig) -> None:
        rule = cfg.federation.aggregation
        if not rule_class(rule).global_is_carried:
            raise ConfigError(
                f"privacy.dp = 'dp-fedavg' needs federation.aggregation = one of {rules_with('global_is_carried')} "
                f"(Flower's accounted DP wrapper acts on the arrays Flower carries), not {rule!r}"
            )
        if cfg.privacy.dp_noise_multiplier <= 0:
            raise ConfigError("privacy.dp = 'dp-fedavg' needs privacy.dp_noise_multiplier > 0 for a finite epsilon")

    def wrap(self, strategy: Any) -> Any:
        from flwr.serverapp.strategy import (
            DifferentialPrivacyClientSideFixedClipping,
            DifferentialPrivacyServerSideFixedClipping,
        )

        # Flower draws the noise from numpy's global generator: seed it for reproducible runs.
        np.random.seed(self.cfg.run.seed)
        base = (
            DifferentialPrivacyServerSideFixedClipping
            if self.clipping == "server"
            else DifferentialPrivacyClientSideFixedClipping
        )

        class SortedReplies(base):  # type: ignore[valid-type,misc]  # summed in client order: same seed, same numbers
            def aggregate_train(self, server_round: int, replies: Iterable[Any]) -> Any:
                replies = sorted(replies, key=_partition)
                strategy.log[server_round].failures = [str(m.error.reason) for m in replies if m.has_error()]
                return super().aggregate_train(server_round, replies)

        self.wrapper = SortedReplies(
            strategy, self.noise_multiplier, self.clipping_norm, strategy.num_sampled, accountant=self.accountant
        )
        return self.wrapper

    def epsilon(self) -> float:
        spent = self.accountant.get_privacy_spent()
        return float(spent.epsilon) if spent.num_releases else 0.0

    def releases(self) -> int:
        return int(self.accountant.get_privacy_spent().num_releases)

    def round_metrics(self, log: RoundLog | None = None, server_round: int = 0) -> dict[str, float]:
        return {"dp_epsilon": self.epsilon(), "dp_releases": float(self.releases())}

    def summary(self, log: RoundLog | None = None) -> dict[str, Any]:
        clipped = "clipped by the server" if self.clipping == "server" else "clipped by each client"
        return {
            "mechanism": "dp-fedavg",
            "level": "user (client)",
            "protects": "each client's whole contribution (add-or-remove-one client)",
            "covers": "the global model after every round, and whatever is computed from it; NOT the updates "
            f"the server receives before it adds the noise ({clipped}, unnoised): the ServerApp itself is trusted",
            "clipping": self.clipping,
            "noise_multiplier": self.noise_multiplier,
            "clipping_norm": self.clipping_norm,
            "noise_std": self.noise_multiplier
            * self.clipping_norm
            / (self.wrapper.num_sampled_clients if self.wrapper else 1),
            "epsilon": self.epsilon(),
            "delta": self.delta,
            "releases": self.releases(),
            "accountant": ACCOUNTANT_NAME,
            "formal": True,
        }
