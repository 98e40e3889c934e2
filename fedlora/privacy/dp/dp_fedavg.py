"""Central (user-level) DP for FedAvg of LoRA factors: Flower's fixed-clipping wrappers + RDP accountant.

Each sampled client's update (new − old adapter, A and B flattened together) is clipped to
``privacy.dp_max_grad_norm``; the server adds N(0, (σ·C / m)²) to the mean of the m updates
(McMahan et al. 2018, arXiv 1710.06963). Flower's ``RdpAccountant`` (Google's dp-accounting)
composes one Gaussian release per round; Flower's wrapper accounts only without sampling
amplification and for uniform weights, so ε is the no-amplification bound of add-or-remove-one
neighbouring client populations. With ``privacy.dp_sampling_amplification`` the wrapper only clips
and noises, and ``sampled_accountant.py`` accounts each released round with amplification by the
round's client sampling (replace-one neighbouring), which is what makes user-level DP affordable when
a few of many clients train per round. The strategy screens the replies before the wrapper counts them;
a round that lost a client (failed or rejected) is not released, as the wrapper itself decides.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from ...config import ExperimentConfig
from ...errors import ConfigError
from ...registry import DP_MODES
from ...rounds import RoundLog
from ...rules import rule_class, rules_with
from .base import TIMING_ONLY, DpMode
from .sampled_accountant import NAME as SAMPLED_ACCOUNTANT_NAME
from .sampled_accountant import SampledClientsAccountant

logger = logging.getLogger("fedlora")
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


def clip_update(upload: Mapping[str, Any], payload: Mapping[str, Any], norm: float) -> dict[str, Any]:
    """payload + (upload - payload) * min(1, norm / ||upload - payload||) (McMahan et al.'s flat clipping)."""
    delta = {k: np.asarray(upload[k], dtype=np.float64) - np.asarray(payload[k], dtype=np.float64) for k in upload}
    total = float(np.sqrt(sum(float(np.sum(d * d)) for d in delta.values())))
    scale = min(1.0, norm / total) if total > 0 else 1.0
    return {k: (np.asarray(payload[k], dtype=np.float64) + delta[k] * scale).astype(np.float32) for k in upload}


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
    uniform_weights = True
    accounts_client_sampling = True

    def __init__(self, cfg: ExperimentConfig):
        super().__init__(cfg)
        p = cfg.privacy
        self.noise_multiplier = p.dp_noise_multiplier
        self.clipping_norm = p.dp_max_grad_norm
        self.clipping = p.dp_clipping
        self.delta = p.dp_delta
        self.population = cfg.federation.num_clients
        self.amplified = p.dp_sampling_amplification
        self.accountant: Any = (
            SampledClientsAccountant(self.delta, self.population)
            if self.amplified
            else make_accountant(self.delta, self.population)
        )
        self.wrapper: Any = None
        self.secure = cfg.federation.secure_aggregation
        self.noise_rng = np.random.default_rng([cfg.run.seed, 23])  # the secure path's server noise
        self.last_contributors = 0

    @classmethod
    def validate(cls, cfg: ExperimentConfig) -> None:
        rule = cfg.federation.aggregation
        if not rule_class(rule).global_is_carried:
            raise ConfigError(
                f"privacy.dp = 'dp-fedavg' needs federation.aggregation = one of {rules_with('global_is_carried')} "
                f"(Flower's accounted DP wrapper acts on the arrays Flower carries), not {rule!r}"
            )
        if cfg.federation.secure_aggregation and cfg.privacy.dp_clipping != "client":
            raise ConfigError(
                "privacy.dp = 'dp-fedavg' with federation.secure_aggregation = true needs privacy.dp_clipping = "
                f"'client', not {cfg.privacy.dp_clipping!r}: server-side clipping needs each client's update, which "
                "SecAgg+ keeps from the server"
            )
        if cfg.privacy.dp_noise_multiplier <= 0:
            raise ConfigError("privacy.dp = 'dp-fedavg' needs privacy.dp_noise_multiplier > 0 for a finite epsilon")
        if cfg.privacy.dp_sampling_amplification and cfg.federation.secure_aggregation:
            raise ConfigError(
                "privacy.dp_sampling_amplification = true cannot be combined with federation.secure_aggregation = "
                "true: SecAgg+ rounds release the mean of the clients that did not drop out, which is not a uniform "
                "sample, so the amplification bound would not hold; set one of them to false"
            )
        if cfg.federation.min_clients not in (0, cfg.federation.num_clients):
            raise ConfigError(
                f"privacy.dp = 'dp-fedavg' needs federation.min_clients = 0 (all {cfg.federation.num_clients}), "
                f"not {cfg.federation.min_clients}: Flower's accountant samples from the whole population, so every "
                "client must be known before round 1"
            )

    def state_dict(self) -> dict[str, Any]:
        return {
            "accountant": json.dumps(self.accountant.state_dict()),
            "noise_rng": json.dumps(self.noise_rng.bit_generator.state),
            "last_contributors": self.last_contributors,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.accountant.load_state_dict(json.loads(state["accountant"]))
        self.noise_rng.bit_generator.state = json.loads(state["noise_rng"])
        self.last_contributors = int(state["last_contributors"])

    def wrap(self, strategy: Any) -> Any:
        from flwr.serverapp.strategy import (
            DifferentialPrivacyClientSideFixedClipping,
            DifferentialPrivacyServerSideFixedClipping,
        )

        # Flower draws the noise from numpy's global generator: seed it for reproducible runs.
        np.random.seed(self.cfg.run.seed)
        mode = self
        base = (
            DifferentialPrivacyServerSideFixedClipping
            if self.clipping == "server"
            else DifferentialPrivacyClientSideFixedClipping
        )

        class SortedReplies(base):  # type: ignore[valid-type,misc]  # summed in client order: same seed, same numbers
            """Screened before the wrapper counts and clips them; a round that lost a client is not released."""

            def aggregate_train(self, server_round: int, replies: Iterable[Any]) -> Any:
                replies = list(replies)
                accepted = strategy.screen_replies(server_round, replies)  # in partition order
                if mode.amplified and len(accepted) != self.num_sampled_clients:
                    arrays, metrics = None, None  # what Flower's accounted wrapper does with a short round
                else:
                    arrays, metrics = super().aggregate_train(server_round, accepted)
                if arrays is not None and mode.amplified:  # the wrapper only noised it: account it here
                    mode.accountant.compose_raw(mode.noise_multiplier, len(accepted))
                entry = strategy.log[server_round]
                if arrays is None and not entry.skipped:
                    # Flower's accounted wrapper releases only rounds with every sampled client's update: the
                    # noise sigma*C/m is sized for m clipped updates (fewer would leave less noise than accounted)
                    entry.skipped = (
                        f"incomplete DP round: {len(accepted)} of {self.num_sampled_clients} sampled clients' updates "
                        "were accepted, and dp-fedavg releases only rounds with all of them (its noise is sized for "
                        "that many); the global model is unchanged"
                    )
                    logger.warning("round %d skipped: %s", server_round, entry.skipped)
                return arrays, metrics

        self.wrapper = SortedReplies(
            strategy,
            self.noise_multiplier,
            self.clipping_norm,
            strategy.num_sampled,
            accountant=None if self.amplified else self.accountant,
        )
        return self.wrapper

    def secure_upload(self, upload: Mapping[str, Any], payload: Mapping[str, Any]) -> dict[str, Any]:
        """The client's clipping: its update (upload - payload, all arrays as one vector) scaled to norm <= C."""
        return clip_update(upload, payload, self.clipping_norm)

    def noise_secure_mean(self, mean: Mapping[str, Any], contributors: int, server_round: int) -> dict[str, Any]:
        """Flower's fl-dp-sa pattern: N(0, (sigma C / m)^2) added by the server to the decoded mean of the
        m clipped updates (m: the clients whose uploads the mean holds, dropouts excluded), one release."""
        from flwr.supercore.privacy_accounting import GaussianPrivacyEvent

        std = self.noise_multiplier * self.clipping_norm / contributors
        out = {k: (v + self.noise_rng.normal(0.0, std, np.shape(v))).astype(np.float32) for k, v in mean.items()}
        self.accountant.compose(GaussianPrivacyEvent(self.noise_multiplier, contributors, self.population))
        self.last_contributors = contributors
        return out

    def neighbouring(self) -> str:
        if self.amplified:
            return "(replace-one client; the sampled set must stay secret)"
        return "(add-or-remove-one client)"

    def epsilon(self) -> float:
        spent = self.accountant.get_privacy_spent()
        return float(spent.epsilon) if spent.num_releases else 0.0

    def releases(self) -> int:
        return int(self.accountant.get_privacy_spent().num_releases)

    def round_metrics(self, log: RoundLog | None = None, server_round: int = 0) -> dict[str, float]:
        return {"dp_epsilon": self.epsilon(), "dp_releases": float(self.releases())}

    def summary(self, log: RoundLog | None = None) -> dict[str, Any]:
        clipped = "clipped by the server" if self.clipping == "server" else "clipped by each client"
        covers = (
            "the global model after every round, and whatever is computed from it; NOT the updates "
            f"the server receives before it adds the noise ({clipped}, unnoised): the ServerApp itself is trusted"
        )
        if self.secure:
            covers = (
                "the global model after every round, and whatever is computed from it. The server sees no client's "
                "update (SecAgg+), only the decoded mean of the clipped updates, and adds the noise to it itself "
                "(Flower's fl-dp-sa pattern): a server that skipped the noise would learn that exact mean, but still "
                "no single client's update unless every other client of the round colluded with it"
            )
        contributors = self.last_contributors or (self.wrapper.num_sampled_clients if self.wrapper else 1)
        return {
            "mechanism": "dp-fedavg",
            "level": "user (client)",
            "protects": "each client's whole contribution " + self.neighbouring(),
            "covers": covers,
            "clipping": self.clipping,
            "noise_added_by": "the server, to the decoded secure sum" if self.secure else "the server",
            "noise_multiplier": self.noise_multiplier,
            "clipping_norm": self.clipping_norm,
            "noise_std": self.noise_multiplier * self.clipping_norm / contributors,
            "epsilon": self.epsilon(),
            "delta": self.delta,
            "releases": self.releases(),
            "accountant": SAMPLED_ACCOUNTANT_NAME if self.amplified else ACCOUNTANT_NAME,
            "clients_per_round": contributors,
            "population": self.population,
            "formal": True,
        }
