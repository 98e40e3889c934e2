"""Client-level RDP accounting with amplification by sampling, for dp-fedavg at many clients.

Flower's fixed-clipping wrappers accept an accountant only without sampling amplification, so this
one calls Google's dp-accounting directly. Each round the server trains a uniformly random subset of
m of the N clients, without replacement (server/strategy.py), and releases the mean of their clipped
updates plus N(0, (σC/m)²), i.e. the sum plus N(0, (σC)²). Sampling without replacement is analysed
under *replace-one* neighbouring populations (Wang, Balle & Kasiviswanathan, AISTATS 2019, Thm 27:
dp-accounting's ``SampledWithoutReplacementDpEvent``), where swapping one client's clipped update for
another's moves the sum by up to 2C: the event's noise multiplier is therefore σ/2. At m = N this is
worse than the no-amplification add-or-remove bound; it wins when m ≪ N. The bound assumes the
adversary does not learn which clients were sampled (the sampling seed derives from run.seed).

It quacks like Flower's ``RdpAccountant`` where DpFedAvg uses one: ``compose``, ``get_privacy_spent``,
``state_dict`` / ``load_state_dict`` (the compositions, replayed on load).
"""

from __future__ import annotations

from typing import Any

NAME = (
    "dp-accounting RDP, amplification by sampling m of N clients without replacement (Wang et al. 2019), "
    "replace-one client, noise multiplier sigma/2 (sensitivity 2C)"
)


class SampledClientsAccountant:
    def __init__(self, delta: float, population: int):
        self.delta = delta
        self.population = population
        self.compositions: list[tuple[float, int, int]] = []  # (sigma, sample size, count)
        self._fresh()

    def _fresh(self) -> None:
        from dp_accounting.privacy_accountant import NeighboringRelation
        from dp_accounting.rdp import RdpAccountant

        self.backend = RdpAccountant(neighboring_relation=NeighboringRelation.REPLACE_ONE)

    def _compose(self, sigma: float, sample_size: int, count: int) -> None:
        from dp_accounting import GaussianDpEvent, SampledWithoutReplacementDpEvent, SelfComposedDpEvent

        if not 1 <= sample_size <= self.population:
            raise ValueError(f"sample size {sample_size} is outside 1..{self.population} (the client population)")
        event = SampledWithoutReplacementDpEvent(self.population, sample_size, GaussianDpEvent(sigma / 2.0))
        self.backend.compose(SelfComposedDpEvent(event, count))

    def compose(self, event: Any, count: int = 1) -> None:
        """One or more rounds' releases; ``event`` is Flower's GaussianPrivacyEvent (its population is ours)."""
        self.compose_raw(float(event.noise_multiplier), int(event.sample_size), count)

    def get_privacy_spent(self) -> Any:
        from flwr.supercore.privacy_accounting import PrivacySpent

        releases = sum(c for _, _, c in self.compositions)
        epsilon, order = self.backend.get_epsilon_and_optimal_order(self.delta) if releases else (0.0, 0.0)
        return PrivacySpent(
            epsilon=float(epsilon),
            delta=self.delta,
            num_releases=releases,
            accounting_method="rdp",
            optimal_order=float(order),
        )

    def state_dict(self) -> dict[str, Any]:
        compositions = [list(c) for c in self.compositions]
        return {"population": self.population, "delta": self.delta, "compositions": compositions}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["population"]) != self.population or float(state["delta"]) != self.delta:
            raise ValueError(
                f"the saved accountant is for {state['population']} clients at delta {state['delta']}, "
                f"this run has {self.population} at {self.delta}"
            )
        self._fresh()
        self.compositions = []
        for sigma, size, count in state["compositions"]:
            self.compose_raw(float(sigma), int(size), int(count))

    def compose_raw(self, sigma: float, sample_size: int, count: int = 1) -> None:
        self._compose(sigma, sample_size, count)
        self.compositions.append((sigma, sample_size, count))
