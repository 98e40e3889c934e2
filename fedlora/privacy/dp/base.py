"""What a DP mode is: one object that validates its config, hooks the client's training,
wraps the server's strategy, and reports its accounting per round and at the end.

To add a DP mode: a module in this package with one ``DpMode`` subclass registered in
``fedlora.registry.DP_MODES``, and its import in ``fedlora/privacy/dp/__init__.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from ...config import ExperimentConfig
from ...rounds import RoundLog
from ...runtime import EncodedSamples, ModelRuntime
from ...training import GradientHook, TrainStats, train_lora
from ..objectives import Objective

DpState = dict[str, torch.Tensor]  # what a client's mode keeps across rounds (its accountant)
# member-independent metrics: wall times and step count (the count of members travels as num-examples)
TIMING_ONLY = frozenset({"train_s", "setup_s", "steps"})


class DpMode:
    """No differential privacy: plain training, the strategy as it is, nothing to account.

    Subclasses override what differs. ``formal`` modes report an (ε, δ) guarantee.
    """

    formal: ClassVar[bool] = False
    freezes_a: ClassVar[bool] = False  # clients train B only, whatever the rule says
    # The server must aggregate with Flower's own FedAvg.aggregate_train (its DP wrappers account
    # only for that); the ServerApp then picks the strategy that keeps it.
    uses_flower_aggregation: ClassVar[bool] = False
    # The metrics a client's reply may carry besides the protocol's (None: all). A DP mode lets
    # through only what does not depend on the members' content, so that nothing member-dependent
    # leaves the client except through the mechanism (losses, the proxy attacker's accuracy, ...
    # would not be covered by its ε).
    released_metrics: ClassVar[frozenset[str] | None] = None
    # Under secure aggregation: every client weighs 1 in the mean (an accountant's assumption)
    # instead of its number of examples.
    uniform_weights: ClassVar[bool] = False
    # privacy.dp_sampling_amplification: this mode can account the server's client sampling
    accounts_client_sampling: ClassVar[bool] = False

    def __init__(self, cfg: ExperimentConfig):
        self.cfg = cfg

    @classmethod
    def validate(cls, cfg: ExperimentConfig) -> None:
        """Refuse settings this mode cannot honour (raise ConfigError naming the keys)."""

    def state_dict(self) -> dict[str, Any]:
        """The server-side state a resumed run needs (an accountant's history); plain values and arrays."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore ``state_dict``'s output."""

    # ---- client side -------------------------------------------------------------------

    def released(self, metrics: Mapping[str, float]) -> dict[str, float]:
        """The client's training metrics that may leave it under this mode."""
        allowed = self.released_metrics
        return dict(metrics) if allowed is None else {k: v for k, v in metrics.items() if k in allowed}

    def gradient_hook(self) -> GradientHook | None:
        """What happens to the gradients before each step (None: ``train.max_grad_norm`` clipping)."""
        return None

    def train(
        self,
        runtime: ModelRuntime,
        members: EncodedSamples,
        objective: Objective,
        seed: int,
        state: Mapping[str, torch.Tensor] | None,
    ) -> tuple[TrainStats, DpState]:
        """The client's local training; returns its stats and what the mode keeps for the next round."""
        return train_lora(runtime, members, self.cfg.train, objective, seed, self.gradient_hook()), {}

    def secure_upload(self, upload: Mapping[str, Any], payload: Mapping[str, Any]) -> dict[str, Any]:
        """Under secure aggregation: what a client puts into the masked sum, given what it was sent."""
        return dict(upload)

    # ---- server side -------------------------------------------------------------------

    def noise_secure_mean(self, mean: Mapping[str, Any], contributors: int, server_round: int) -> dict[str, Any]:
        """Under secure aggregation: the decoded mean of ``contributors`` uploads, as the mode releases it."""
        return dict(mean)

    def wrap(self, strategy: Any) -> Any:
        """The strategy the ServerApp runs (a Flower DP wrapper around it, or itself)."""
        return strategy

    def round_metrics(self, log: RoundLog, server_round: int) -> dict[str, float]:
        """Accounting numbers for this round's metrics.jsonl row."""
        return {}

    def summary(self, log: RoundLog) -> dict[str, Any]:
        """summary.json's ``privacy.dp``: the mechanism, its parameters and what it guarantees."""
        return {"mechanism": self.cfg.privacy.dp}
