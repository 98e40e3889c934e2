"""What an aggregation rule is: its traits and both halves of its protocol.

A rule says what the server sends each client (the payload), how a client turns that and what
it kept into the adapter it trains, what it sends up and keeps, how the server folds one
round's uploads into its state, and which models the audit looks at (``ModelView``): the
global model, and each client's last update as the server sees it. The math lives in
``fedlora.aggregation``; arrays are numpy; nothing here imports Flower.

To add a rule: a module in this package with one ``Rule`` subclass registered in
``fedlora.registry.RULES``, and its import in ``fedlora/rules/__init__.py``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from .. import aggregation as agg
from ..audit_views import AuditViews, audited_clients
from ..config import ExperimentConfig
from ..errors import ConfigError
from ..models.lora import ModelView
from ..registry import RULES

Arrays = dict[str, np.ndarray]  # an adapter state (or part of one) that a rule builds
State = Mapping[str, np.ndarray]  # one that a rule reads
PerClient = Mapping[int, State]  # client id -> its state


def client_rank(cfg: ExperimentConfig, client_id: int) -> int:
    """``federation.client_ranks`` cycled over client ids, else ``model.lora_rank``."""
    ranks = cfg.federation.client_ranks
    return int(ranks[client_id % len(ranks)]) if ranks else cfg.model.lora_rank


def client_scaling(cfg: ExperimentConfig, client_id: int) -> float:
    """peft's s = lora_alpha / r for this client's rank (alpha is shared, so s varies with r)."""
    return cfg.model.lora_alpha / client_rank(cfg, client_id)


def factor(state: State, which: str) -> Arrays:
    """The ``"A"`` or ``"B"`` factors of an adapter state."""
    suffix = {"A": agg.A_SUFFIX, "B": agg.B_SUFFIX}[which]
    return {k: v for k, v in state.items() if k.endswith(suffix)}


def at_rank(key: str, shape: tuple[int, ...], rank: int) -> tuple[int, ...]:
    """The shape of LoRA factor ``key`` at another rank: A is (r, ...), B is (d_out, r, ...)."""
    if key.endswith(agg.A_SUFFIX):
        return (rank, *shape[1:])
    if key.endswith(agg.B_SUFFIX):
        return (shape[0], rank, *shape[2:])
    return tuple(shape)


def rules_with(trait: str) -> list[str]:
    """The registered rules whose class sets ``trait`` (for messages that say which rules would do)."""
    return [e.key for e in RULES.entries() if getattr(e.value, trait)]


@dataclass
class ClientSetup:
    adapter: Arrays  # the LoRA state to train from (this client's rank)
    base_deltas: dict[str, np.ndarray] = field(default_factory=dict)  # merged into the base weights (FLoRA)


class Rule(ABC):
    """One aggregation rule. Traits are class attributes; the server's state lives in the instance.

    Clients call the ``client_*`` methods (stateless); the server calls ``start`` once with the
    seeded initial adapter at ``model.lora_rank`` (B = 0, the one every client builds from the
    run seed) and then ``payload``/``aggregate`` each round.
    """

    train_a: ClassVar[bool] = True  # False: A stays at the shared seeded init
    upload: ClassVar[tuple[str, ...]] = ("A", "B")  # the factors a client sends up
    fresh_lora: ClassVar[bool] = False  # merge what arrives into the base, restart the LoRA each round
    heterogeneous_ranks: ClassVar[bool] = False  # clients may train different ranks (federation.client_ranks)
    # The global adapter is exactly the arrays Flower carries between rounds, so Flower's own
    # strategy wrappers (central DP) may act on it.
    global_is_carried: ClassVar[bool] = False
    # The aggregate is a weighted mean of same-shaped uploads, so secure aggregation can compute it
    # without the server seeing an upload (``fold_mean``); otherwise ``not_summable`` says why not.
    summable: ClassVar[bool] = False
    not_summable: ClassVar[str] = "its aggregate is not a weighted mean of the uploads"

    def __init__(self, cfg: ExperimentConfig):
        self.cfg = cfg
        # the last update of each audited client (evaluation.audit_clients), as the server sees it
        self.views: AuditViews = AuditViews(audited_clients(cfg))

    @classmethod
    def validate(cls, cfg: ExperimentConfig) -> None:
        """Refuse settings this rule cannot honour (raise ConfigError naming the keys)."""
        if cfg.federation.secure_aggregation and not cls.summable:
            raise ConfigError(
                "federation.secure_aggregation = true cannot run federation.aggregation = "
                f"{cfg.federation.aggregation!r}: "
                f"{cls.not_summable}, and SecAgg+ reveals only the weighted mean of same-shaped uploads; choose one "
                f"of {rules_with('summable')}"
            )
        if cfg.federation.client_ranks and not cls.heterogeneous_ranks:
            raise ConfigError(
                f"federation.client_ranks = {list(cfg.federation.client_ranks)} needs a heterogeneous-rank rule "
                f"(federation.aggregation = one of {rules_with('heterogeneous_ranks')}), not "
                f"{cfg.federation.aggregation!r}"
            )

    # ---- client half -------------------------------------------------------------------

    @abstractmethod
    def client_setup(self, client_id: int, payload: State, kept: State, init: State) -> ClientSetup:
        """The adapter to train from what arrived (``payload``) and what ``client_keep`` returned last
        round (empty in the first). ``init`` is the client's seeded initial adapter (the same A on
        every client of the same rank)."""

    def client_upload(self, trained: State) -> Arrays:
        """The factors the rule sends up, in the adapter's key order (Flower's DP clipping pairs arrays by position)."""
        keep: set[str] = set()
        for which in self.upload:
            keep |= set(factor(trained, which))
        return {k: v for k, v in trained.items() if k in keep}

    def client_keep(self, trained: State, setup: ClientSetup) -> Arrays:
        """What must outlive the round on the client (in Flower's ``context.state``)."""
        return {}

    def client_eval_only(self, kept: State) -> Arrays:
        """Arrays sent beside the upload for the simulation's audit only, never aggregated."""
        return {}

    # ---- server half -------------------------------------------------------------------

    def start(self, initial: State) -> Rule:
        self.initial = {k: np.asarray(v, dtype=np.float32) for k, v in initial.items()}
        self.like = agg.lora_pairs(self.initial)
        self.global_lora: Arrays = dict(self.initial)
        return self

    def state_dict(self) -> dict[str, Any]:
        """Everything the server half holds (for a checkpoint): the instance's attributes but the config."""
        return {k: v for k, v in vars(self).items() if k != "cfg"}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        vars(self).update(state)
        if not isinstance(self.views, AuditViews):  # an older checkpoint holds a plain dict
            self.views = AuditViews(audited_clients(self.cfg), self.views)

    def keep_views_in(self, folder: Path) -> None:
        """Write each audited client's view to ``folder`` as it arrives and hold only its path (a run's
        ``views/``); views held so far go there too, and a resumed run's follow its run folder."""
        self.views = self.views.moved_to(folder)

    @abstractmethod
    def payload(self, client_id: int) -> Arrays:
        """What the server sends this client in the coming round."""

    def mark_sent(self, client_id: int) -> None:
        """Called once the payload is on its way (FLoRA counts what each client has merged)."""

    def aggregate(self, uploads: PerClient, weights: Mapping[int, float], eval_only: PerClient | None = None) -> None:
        """Fold one round's uploads (client id -> arrays) into the global state, in client-id order."""
        ids = sorted(uploads)
        if not ids:
            raise ValueError("nothing to aggregate: no client uploads")
        self.fold(ids, uploads, [float(weights[i]) for i in ids], eval_only or {})

    @abstractmethod
    def fold(self, ids: list[int], uploads: PerClient, weights: list[float], eval_only: PerClient) -> None:
        """``aggregate`` without the bookkeeping: ``ids`` sorted, ``weights`` aligned with them."""

    def expected_upload(self, client_id: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """Key -> (shape, dtype) of the upload this client must send: the rule's factors of the server's
        adapter, at the client's rank where ``federation.client_ranks`` gives one (the server's checks)."""
        ranks = self.cfg.federation.client_ranks
        rank = client_rank(self.cfg, client_id) if ranks else None
        # zero-size stand-ins (broadcast views), so that client_upload picks the keys as it does on a client
        stand_ins = {
            k: np.broadcast_to(np.zeros((), v.dtype), v.shape if rank is None else at_rank(k, v.shape, rank))
            for k, v in self.initial.items()
        }
        return {k: (tuple(v.shape), v.dtype) for k, v in self.client_upload(stand_ins).items()}

    def expected_eval_only(self, client_id: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """Key -> (shape, dtype) of the audit-only arrays the server's views are built from (none by default)."""
        return {}

    def upload_keys(self) -> list[str]:
        """The keys a client uploads, in the adapter's order (secure aggregation sends arrays by position)."""
        return list(self.client_upload(self.initial))

    def fold_mean(self, mean: State) -> None:
        """Take the weighted mean of the round's uploads as the new global state (summable rules);
        under secure aggregation it is all the server learns of the round."""
        raise NotImplementedError(f"{type(self).__name__} is not summable")

    def record_views(self, ids: list[int], uploads: PerClient, weights: list[float], eval_only: PerClient) -> None:
        """Keep each client's update as the server sees it without secure aggregation (the audit's client views)."""
        self.views.update({i: ModelView(lora=dict(uploads[i])) for i in ids})

    def carried(self) -> Arrays:
        """What the strategy hands back to Flower as the round's arrays."""
        return dict(self.global_lora) if self.global_is_carried else {}

    def sync(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Take the global adapter from Flower's carried arrays (central DP's noise included)."""
        if self.global_is_carried and arrays:
            self.global_lora = dict(arrays)

    def observe(self, uploads: PerClient) -> None:
        """Record uploads the server saw but Flower aggregated (central DP): the audit's client views."""
        for i, upload in uploads.items():
            self.views[i] = ModelView(lora=dict(upload))

    @abstractmethod
    def global_view(self) -> ModelView:
        """The global model the audit attacks."""

    def client_views(self) -> Mapping[int, ModelView]:
        """The audited clients' views; on disk, each is read when asked for (one at a time in the audit)."""
        return self.views
