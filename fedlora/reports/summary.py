"""``summary.json`` as one typed record, read and written only here.

Reading is tolerant, because reports and comparisons must work on runs of any age: a missing
section or key reads as its default (or None), and a key this version does not know is kept
in ``extra`` so that rewriting a summary never drops it. Writing keeps today's key order
(``to_dict`` of a freshly read file gives the same JSON back) and is atomic.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..outputs import SUMMARY_FILE, RunOutputs
from ..run_files import read_json
from ..run_status import refuse_unfinished


def as_number(value: Any) -> float | None:
    """A real number, or None for missing/None/NaN/inf/non-numbers."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


class Metrics(dict[str, Any]):
    """A block whose keys vary by run (one attack's leakage numbers, quality, DP): the JSON object, with typed reads."""

    def number(self, key: str) -> float | None:
        """The value as a finite float, None when missing, NaN or not a number."""
        return as_number(self.get(key))

    def block(self, key: str) -> Metrics:
        """A nested object (``details``, ``unmeasurable``, ...), empty when absent or not an object."""
        value = self.get(key)
        return Metrics(value) if isinstance(value, Mapping) else Metrics()


def _keys(cls: type) -> dict[str, str]:
    """JSON key -> field name, in field (= file) order; ``extra`` is not a key."""
    return {f.metadata.get("key", f.name): f.name for f in fields(cls) if f.name != "extra"}


def _split(cls: type, data: Mapping[str, Any], shapes: Mapping[str, type] | None = None) -> tuple[dict, dict]:
    """(known values by field name, unknown keys); a known key of the wrong shape is kept as unknown, read as absent."""
    keys, shapes = _keys(cls), shapes or {}
    known, extra = {}, {}
    for key, value in data.items():
        name = keys.get(key)
        if name is None or (name in shapes and not isinstance(value, shapes[name])):
            extra[key] = value
        else:
            known[name] = value
    return known, extra


def _join(obj: Any, **converted: Any) -> dict[str, Any]:
    """The known fields that are set (None = not recorded), then the unknown keys, as JSON."""
    out = {}
    for key, name in _keys(type(obj)).items():
        value = converted[name] if name in converted else getattr(obj, name)
        if value is not None:
            out[key] = value
    return {**out, **obj.extra}


def _flat(cls: Any, data: Mapping[str, Any]) -> Any:
    """A section of plain fields: its known keys, the rest in ``extra``."""
    known, extra = _split(cls, data)
    return cls(**known, extra=extra)


@dataclass
class Timing:
    """Wall time in seconds; ``reevaluate_s`` is the last ``fedlora evaluate``'s own time."""

    total_s: float = 0.0
    train_s: float = 0.0
    eval_s: float = 0.0
    reevaluate_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Timing:
        return _flat(cls, data)

    def to_dict(self) -> dict[str, Any]:
        return _join(self)


@dataclass
class Communication:
    """Mean bytes per participating client and round; eval-only bytes (FedSA's B for the audit) apart."""

    bytes_up_per_client_round: float = 0.0
    bytes_down_per_client_round: float = 0.0
    bytes_eval_only_per_client_round: float = 0.0
    bytes_down_per_client_round_max: float = 0.0
    # every protocol message's serialised content (config, masks and key shares included)
    wire_bytes_up_per_client_round: float | None = None
    wire_bytes_down_per_client_round: float | None = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Communication:
        return _flat(cls, data)

    def to_dict(self) -> dict[str, Any]:
        return _join(self)


@dataclass
class Failures:
    """What went wrong over the run: failed replies, updates the server rejected, rounds it skipped.

    ``reasons`` counts each plain reason: ``"failed: <the client's error>"``, ``"rejected: <kind>"``
    (``fedlora.update_validation``), ``"skipped: <why>"``.
    """

    failed_replies: int = 0
    rejected_updates: int = 0
    skipped_rounds: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Failures:
        known, extra = _split(cls, data, {"reasons": Mapping})
        return cls(**{**known, "reasons": dict(known.get("reasons", {}))}, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        return _join(self, reasons=dict(self.reasons))

    @property
    def occurred(self) -> bool:
        return bool(self.failed_replies or self.rejected_updates or self.skipped_rounds)


Attacks = dict[str, Metrics]  # attack name -> leakage_metrics' keys plus ``details``


def _attacks(data: Mapping[str, Any]) -> Attacks:
    """A non-object entry cannot be read as metrics: it becomes an error the reports show."""
    return {
        name: Metrics(m) if isinstance(m, Mapping) else Metrics(error=f"unexpected entry: {m!r}")
        for name, m in data.items()
    }


@dataclass
class Privacy:
    """The membership audit of the global model and of each client's last update, and the DP mechanism."""

    global_model: Attacks = field(default_factory=dict, metadata={"key": "global"})
    clients: dict[str, Attacks] = field(default_factory=dict)  # client id -> attacks on its last update
    dp: Metrics | None = None  # None: a run from before DP reporting
    clients_from: str | None = None  # where the client rows come from when not from this evaluation
    verdict: Metrics | None = None  # per view: the best attack and whether its corrected interval excludes 0.5
    metric_keys: Metrics | None = None  # what each leakage key means (test-ROC vs aux-threshold TPR)
    # per-silo runs: silo id -> attacks on the global model that silo ran on its own sets, and what they cover
    silos: dict[str, Attacks] = field(default_factory=dict)
    silo_audit: Metrics | None = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Privacy:
        shapes = {
            "global_model": Mapping,
            "clients": Mapping,
            "dp": Mapping,
            "verdict": Mapping,
            "metric_keys": Mapping,
            "silos": Mapping,
            "silo_audit": Mapping,
        }
        known, extra = _split(cls, data, shapes)
        # a client entry that is not an object has no attack to show
        clients = {str(c): _attacks(a) for c, a in known.pop("clients", {}).items() if isinstance(a, Mapping)}
        silos = {str(c): _attacks(a) for c, a in known.pop("silos", {}).items() if isinstance(a, Mapping)}
        return cls(
            global_model=_attacks(known.pop("global_model", {})),
            clients=clients,
            dp=Metrics(known.pop("dp")) if "dp" in known else None,
            verdict=Metrics(known.pop("verdict")) if "verdict" in known else None,
            metric_keys=Metrics(known.pop("metric_keys")) if "metric_keys" in known else None,
            silos=silos,
            silo_audit=Metrics(known.pop("silo_audit")) if "silo_audit" in known else None,
            **known,
            extra=extra,
        )

    def to_dict(self) -> dict[str, Any]:
        return _join(
            self,
            global_model={a: dict(m) for a, m in self.global_model.items()},
            clients={c: {a: dict(m) for a, m in attacks.items()} for c, attacks in self.clients.items()},
            dp=None if self.dp is None else dict(self.dp),
            verdict=None if self.verdict is None else dict(self.verdict),
            metric_keys=None if self.metric_keys is None else dict(self.metric_keys),
            silos={c: {a: dict(m) for a, m in attacks.items()} for c, attacks in self.silos.items()} or None,
            silo_audit=None if self.silo_audit is None else dict(self.silo_audit),
        )

    def attack_names(self) -> list[str]:
        """Every attack name, global model first, in the order the summary lists them."""
        names: list[str] = []
        for attacks in (self.global_model, *self.clients.values(), *self.silos.values()):
            names += [a for a in attacks if a not in names]
        return names


@dataclass
class RunSummary:
    """One finished run's summary.json; fields in the file's key order."""

    method: str | None = None
    aggregation: str | None = None
    num_clients: int | None = None
    rounds: int | None = None
    seed: int | None = None
    base_model: str | None = None
    dataset: str | None = None
    # data.on_bad_image = "skip": {"count": n, "files": [...]}, the images the loader left out; None: not skipping
    skipped_images: Metrics | None = None
    privacy: Privacy = field(default_factory=Privacy)
    adapter_rank: int | None = None
    client_ranks: list[int] | None = None
    quality: Metrics = field(default_factory=Metrics)
    timing: Timing | None = None  # None: the summary records no timing
    communication: Communication | None = None
    # federation.secure_aggregation: enabled, its parameters, what the server sees, dropouts, errors
    secure_aggregation: Metrics | None = None
    failures: Failures | None = None  # None: a run from before the server validated updates
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunSummary:
        shapes = {
            "privacy": Mapping,
            "quality": Mapping,
            "timing": Mapping,
            "communication": Mapping,
            "secure_aggregation": Mapping,
            "failures": Mapping,
            "skipped_images": Mapping,
            "client_ranks": list,
        }
        known, extra = _split(cls, data, shapes)
        sections: dict[str, Any] = {
            "privacy": Privacy.from_dict(known.pop("privacy", {})),
            "quality": Metrics(known.pop("quality", {})),
            "timing": Timing.from_dict(known.pop("timing")) if "timing" in known else None,
            "communication": Communication.from_dict(known.pop("communication")) if "communication" in known else None,
            "secure_aggregation": Metrics(known.pop("secure_aggregation")) if "secure_aggregation" in known else None,
            "failures": Failures.from_dict(known.pop("failures")) if "failures" in known else None,
            "skipped_images": Metrics(known.pop("skipped_images")) if "skipped_images" in known else None,
        }
        return cls(**known, **sections, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object, keys in summary.json's order (unknown keys last)."""
        return _join(
            self,
            privacy=self.privacy.to_dict(),
            quality=dict(self.quality),
            timing=None if self.timing is None else self.timing.to_dict(),
            communication=None if self.communication is None else self.communication.to_dict(),
            secure_aggregation=None if self.secure_aggregation is None else dict(self.secure_aggregation),
            failures=None if self.failures is None else self.failures.to_dict(),
            skipped_images=None if self.skipped_images is None else dict(self.skipped_images),
        )

    def write(self, run_dir: str | Path) -> Path:
        """Atomically (temporary file, then replace); NaN and inf become null."""
        return RunOutputs(run_dir).write_json(SUMMARY_FILE, self.to_dict())


def load_summary(run_dir: str | Path) -> RunSummary:
    """The run's summary.json; a missing or damaged one is a RunFolderError naming its path (an
    unfinished run's folder: why it is unfinished, from its status.json)."""
    refuse_unfinished(Path(run_dir), SUMMARY_FILE)
    return RunSummary.from_dict(read_json(Path(run_dir) / SUMMARY_FILE, "not a finished run folder?"))
