"""The server's checks on each client's reply before its update is aggregated (numpy only, no Flower).

Why: every rule averages, stacks or multiplies whatever arrives, so one NaN, one array the server
never asked for, one shape it did not send or one update scaled by 1e30 would otherwise become
the global adapter. Each upload is checked against the server's own expectation for that client
(``Rule.expected_upload``: the rule's upload keys, their shapes at the client's rank, their
dtypes), never against another client's, so a wrong shape is caught even when every client
sends the same one.

The **update norm** is the L2 norm, over all uploaded arrays together, of the upload minus what
the server sent that client under the same key and shape (FedAvg's A and B, FFA's B, FedSA's A,
FlexLoRA's truncation: the update dp-fedavg clips); an array the server did not send in that
shape (FLoRA's fresh factors) counts with its own norm. ``federation.max_update_norm`` bounds it
(0: no limit).

A partition id claimed by more than one reply rejects every one of them: which one is genuine
cannot be told, and keeping the first would make the aggregate depend on the order in which
replies arrive. A reply must also come from the node of the partition it claims, and that
partition must have been sampled this round.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

State = Mapping[str, np.ndarray]
Expected = Mapping[str, tuple[tuple[int, ...], np.dtype]]  # key -> (shape, dtype) the server expects

# What went wrong, one short phrase each (``summary.json`` counts rejections by it).
MALFORMED = "malformed reply"
WRONG_SENDER = "wrong sender"
NOT_SAMPLED = "not sampled"
DUPLICATE = "duplicate partition id"
BAD_WEIGHT = "bad weight"
KEYS = "unexpected keys"
SHAPE = "wrong shape"
DTYPE = "wrong dtype"
NON_FINITE = "non-finite values"
NORM = "update norm too large"


@dataclass(frozen=True)
class Reply:
    """One successful reply as the server read it, before any of it is trusted."""

    partition: int  # the partition id the reply claims
    upload: State  # the arrays for aggregation (audit-only arrays apart)
    weight: float  # its num-examples
    sender: int | None  # the partition of the node it came from; None: a node the server does not know
    index: int = 0  # its position among the round's replies
    audit: State = field(default_factory=dict)  # arrays sent for the audit only (FedSA's B)


@dataclass(frozen=True)
class Rejection:
    who: str  # "partition 3", or "node 1002" when no partition can be trusted
    kind: str  # one of the phrases above
    detail: str

    def line(self) -> str:
        """``"<who>: <kind>: <detail>"``, the form metrics.jsonl records."""
        return f"{self.who}: {self.kind}: {self.detail}"


def rejection_kind(line: str) -> str:
    """The kind of a recorded rejection line (inverse of ``Rejection.line``)."""
    parts = line.split(": ", 2)
    return parts[1] if len(parts) == 3 else line


def _shape(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(int(d)) for d in shape) + ")"


def _listed(keys: Sequence[str], limit: int = 3) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def update_norm(upload: State, sent: State) -> float:
    """L2 norm of (upload - sent) over the keys sent with the same shape, of the upload itself elsewhere (float64)."""
    total = 0.0
    for key, value in upload.items():
        arr = np.asarray(value, dtype=np.float64)
        ref = sent.get(key)
        if ref is not None and np.shape(ref) == arr.shape:
            arr = arr - np.asarray(ref, dtype=np.float64)
        total += float(np.sum(arr * arr))
    return float(np.sqrt(total))


def check_upload(upload: State, expected: Expected, sent: State, max_norm: float = 0.0) -> tuple[str, str] | None:
    """Why this upload cannot be aggregated, as (kind, detail); None when it can."""
    missing = [k for k in expected if k not in upload]
    extra = sorted(k for k in upload if k not in expected)
    if missing or extra:
        parts = ([f"missing {_listed(missing)}"] if missing else []) + ([f"extra {_listed(extra)}"] if extra else [])
        return KEYS, "; ".join(parts) + f" (the rule expects {len(expected)} arrays)"
    for key, (shape, dtype) in expected.items():
        arr = upload[key]
        if tuple(np.shape(arr)) != tuple(shape):
            return SHAPE, f"{key} has shape {_shape(np.shape(arr))}, the server expects {_shape(shape)}"
        if np.asarray(arr).dtype != dtype:
            return DTYPE, f"{key} is {np.asarray(arr).dtype}, the server expects {np.dtype(dtype)}"
    for key in expected:
        arr = np.asarray(upload[key])
        if not np.all(np.isfinite(arr)):
            nan, inf = int(np.count_nonzero(np.isnan(arr))), int(np.count_nonzero(np.isinf(arr)))
            return NON_FINITE, f"{key} holds {nan} NaN and {inf} infinite values"
    if max_norm > 0:
        norm = update_norm(upload, sent)
        if norm > max_norm:
            return NORM, f"{norm:.4g} exceeds federation.max_update_norm = {max_norm:g}"
    return None


def screen(
    replies: Sequence[Reply],
    *,
    sampled: Collection[int],
    expected: Callable[[int], Expected],
    sent: Callable[[int], State],
    max_norm: float = 0.0,
    expected_audit: Callable[[int], Expected] | None = None,
) -> tuple[list[Reply], list[Rejection]]:
    """The replies that may be aggregated (by partition id) and why each other one may not (by partition id).

    ``expected(pid)`` and ``sent(pid)`` are what the server expects of, and sent to, that client
    this round; they are asked only for sampled partitions. ``expected_audit(pid)``: the audit-only
    arrays the rule builds its audited views from (FedSA's B), checked the same way (no norm);
    a rule that expects none ignores any that come.
    """
    rejected: list[tuple[int, Rejection]] = []
    claims = Counter(r.partition for r in replies if r.sender == r.partition)  # a wrong sender's claim is void
    accepted = []
    for r in replies:
        who = f"partition {r.partition}"
        if r.sender is None:
            problem: tuple[str, str] | None = (WRONG_SENDER, "it came from a node outside the federation")
        elif r.sender != r.partition:
            problem = (WRONG_SENDER, f"it came from partition {r.sender}'s node")
        elif r.partition not in sampled:
            problem = (NOT_SAMPLED, f"partition {r.partition} was not sampled this round")
        elif claims[r.partition] > 1:
            problem = (DUPLICATE, f"{claims[r.partition]} replies claim it; none is aggregated")
        elif not (np.isfinite(r.weight) and r.weight > 0):
            problem = (BAD_WEIGHT, f"num-examples = {r.weight!r} must be a positive finite number")
        else:
            problem = check_upload(r.upload, expected(r.partition), sent(r.partition), max_norm)
            audit = expected_audit(r.partition) if expected_audit is not None else {}
            if problem is None and audit:
                found = check_upload(r.audit, audit, {})
                problem = None if found is None else (found[0], "audit-only arrays: " + found[1])
        if problem is None:
            accepted.append(r)
        else:
            rejected.append((r.partition, Rejection(who, *problem)))
    rejected.sort(key=lambda item: item[0])
    return sorted(accepted, key=lambda r: r.partition), [rej for _, rej in rejected]
