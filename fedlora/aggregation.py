"""Aggregation rules on LoRA factors: pure array math, no Flower import.

Each rule maps the clients' adapter states (``name -> array``) and their weights to the
next global state. Rules are chosen by ``federation.aggregation``.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np

State = Mapping[str, np.ndarray]


def normalise_weights(weights: Sequence[float]) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or len(w) == 0 or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"aggregation weights must be non-negative with a positive sum, got {list(weights)}")
    return w / w.sum()


def _check_same_layout(states: Sequence[State]) -> None:
    if not states:
        raise ValueError("nothing to aggregate: no client states")
    ref = states[0]
    for k, s in enumerate(states[1:], start=1):
        if set(s) != set(ref):
            diff = sorted(set(s) ^ set(ref))[:3]
            raise ValueError(f"client state {k} has different LoRA keys than client 0 (e.g. {diff})")
        for name, arr in s.items():
            if arr.shape != ref[name].shape:
                raise ValueError(f"{name}: client {k} has shape {arr.shape}, client 0 has {ref[name].shape}")


def fedavg(states: Sequence[State], weights: Sequence[float]) -> dict[str, np.ndarray]:
    """FedIT: the weighted mean of A and of B separately (McMahan et al. 2017 on the factors).

    Not the mean of the updates B·A: the error is ½ Σₖₗ pₖpₗ (Bₖ − Bₗ)(Aₖ − Aₗ). Kept as the
    baseline every federated LoRA paper compares against.
    """
    _check_same_layout(states)
    p = normalise_weights(weights)
    out = {}
    for name in states[0]:
        acc = np.zeros(states[0][name].shape, dtype=np.float64)
        for pk, s in zip(p, states):
            acc += pk * s[name]
        out[name] = acc.astype(np.float32)
    return out


AGGREGATORS: dict[str, Callable[[Sequence[State], Sequence[float]], dict[str, np.ndarray]]] = {
    "fedavg": fedavg,
}


def aggregate(rule: str, states: Sequence[State], weights: Sequence[float]) -> dict[str, np.ndarray]:
    if rule not in AGGREGATORS:
        raise ValueError(f"federation.aggregation = {rule!r} is unknown; choose one of {sorted(AGGREGATORS)}")
    return AGGREGATORS[rule](states, weights)
