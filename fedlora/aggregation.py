"""Aggregation rules on LoRA factors: pure array math, no Flower import.

Each rule maps the clients' adapter states (``name -> array``) and their weights to the
next global state; ``fedlora.rules`` says what each rule's server and clients send, train and
keep. None of the rules applies peft's scaling s = lora_alpha / r implicitly: products are bare
B·A unless ``scalings`` is given.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

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


# --------------------------------------------------------------------------------------------
# LoRA-pair helpers
# --------------------------------------------------------------------------------------------

A_SUFFIX = ".lora_A.weight"
B_SUFFIX = ".lora_B.weight"


def lora_pairs(state: State) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Group a peft adapter state into ``{module_prefix: (A, B)}``.

    ``module_prefix`` is the key with ``.lora_A.weight`` / ``.lora_B.weight`` stripped, so
    ``lora_key(prefix, "A")`` gives back the original key. Every rule that works on the product
    B·A needs both halves of a pair: an A without its B (or the reverse) is a ValueError naming
    the key, and so is a key that is neither (e.g. a ``modules_to_save`` tensor) — silently
    dropping it would lose trained parameters.
    """
    a_parts: dict[str, np.ndarray] = {}
    b_parts: dict[str, np.ndarray] = {}
    for key, arr in state.items():
        if key.endswith(A_SUFFIX):
            a_parts[key[: -len(A_SUFFIX)]] = np.asarray(arr)
        elif key.endswith(B_SUFFIX):
            b_parts[key[: -len(B_SUFFIX)]] = np.asarray(arr)
        else:
            raise ValueError(f"{key}: not a LoRA factor (expected a key ending in {A_SUFFIX!r} or {B_SUFFIX!r})")
    for prefix in sorted(set(a_parts) ^ set(b_parts)):
        have, missing = (A_SUFFIX, B_SUFFIX) if prefix in a_parts else (B_SUFFIX, A_SUFFIX)
        raise ValueError(f"incomplete LoRA pair: {prefix + have} has no matching {prefix + missing}")
    pairs = {}
    for prefix in sorted(a_parts):
        a, b = a_parts[prefix], b_parts[prefix]
        if a.ndim not in (2, 4) or b.ndim != a.ndim or b.shape[1] != a.shape[0] or b.shape[2:] not in ((), (1, 1)):
            raise ValueError(
                f"{prefix}: lora_A {a.shape} and lora_B {b.shape} are not a (r, d_in)/(d_out, r) "
                "or (r, c_in, kh, kw)/(c_out, r, 1, 1) LoRA pair"
            )
        pairs[prefix] = (a, b)
    return pairs


def lora_key(prefix: str, factor: str) -> str:
    """The peft key of factor ``"A"`` or ``"B"`` of module ``prefix`` (inverse of :func:`lora_pairs`)."""
    return prefix + {"A": A_SUFFIX, "B": B_SUFFIX}[factor]


def to_matrices(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flatten a LoRA pair to matrices A: (r, d_in·kh·kw), B: (d_out, r).

    A Conv2d LoRA is conv(B, 1×1) ∘ conv(A, kh×kw), whose kernel is
    ``(B_mat @ A_mat).reshape(c_out, c_in, kh, kw)``; Linear factors are returned as they are.
    So every rule below can work on plain matrices.
    """
    return a.reshape(a.shape[0], -1), b.reshape(b.shape[0], b.shape[1])


def from_matrices(
    a_mat: np.ndarray, b_mat: np.ndarray, like_a: np.ndarray, like_b: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`to_matrices`, shaped like the template pair but with the rank of ``a_mat``.

    ``from_matrices(*to_matrices(a, b), a, b)`` returns (a, b) unchanged; the rank may change
    (stacking, SVD truncation), the kernel and channel dimensions are taken from the templates.
    """
    r = a_mat.shape[0]
    if b_mat.shape[1] != r:
        raise ValueError(f"A has rank {r} but B has {b_mat.shape[1]} columns")
    return a_mat.reshape((r,) + like_a.shape[1:]), b_mat.reshape((like_b.shape[0], r) + like_b.shape[2:])


def delta_weights(state: State, scaling: float = 1.0) -> dict[str, np.ndarray]:
    """The dense update per module, ``scaling · B @ A`` as a (d_out, d_in·kh·kw) float64 matrix.

    The default ``scaling=1`` gives the bare product B·A. peft applies s = lora_alpha / r on top
    (``W + s·B·A``), so the caller must pass the client's s to get the update that really acts on
    the model — and, with heterogeneous ranks, a different s per client.
    """
    out = {}
    for prefix, (a, b) in lora_pairs(state).items():
        a_mat, b_mat = to_matrices(a, b)
        out[prefix] = scaling * (b_mat.astype(np.float64) @ a_mat.astype(np.float64))
    return out


def _client_scalings(scalings: Sequence[float] | None, n: int, per: str = "client") -> np.ndarray:
    if scalings is None:
        return np.ones(n)
    s = np.asarray(scalings, dtype=np.float64)
    if s.shape != (n,) or not np.all(np.isfinite(s)):
        raise ValueError(f"need one finite scaling per {per} ({n}), got {list(scalings)}")
    return s


def _paired_states(states: Sequence[State]) -> list[dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Pairs of every client, checked to cover the same modules with the same d_out / d_in.

    Ranks may differ between clients (heterogeneous-rank rules); the outer dimensions may not.
    """
    if not states:
        raise ValueError("nothing to aggregate: no client states")
    paired = [lora_pairs(s) for s in states]
    ref = paired[0]
    for k, pairs in enumerate(paired[1:], start=1):
        if set(pairs) != set(ref):
            diff = sorted(set(pairs) ^ set(ref))[:3]
            raise ValueError(f"client state {k} has different LoRA modules than client 0 (e.g. {diff})")
        for prefix, (a, b) in pairs.items():
            a0, b0 = ref[prefix]
            if a.shape[1:] != a0.shape[1:] or b.shape[0] != b0.shape[0] or b.shape[2:] != b0.shape[2:]:
                raise ValueError(
                    f"{prefix}: client {k} has A {a.shape}, B {b.shape}; client 0 has A {a0.shape}, B {b0.shape} "
                    "(only the rank may differ)"
                )
    return paired


def _dtype(states: Sequence[State]) -> np.dtype:
    return np.result_type(*(arr.dtype for s in states for arr in s.values()))


def mean_delta(
    states: Sequence[State], weights: Sequence[float], scalings: Sequence[float] | None = None
) -> dict[str, np.ndarray]:
    """The exact target of every federated LoRA rule: ``Σₖ pₖ sₖ Bₖ Aₖ`` per module (float64 matrices).

    pₖ are the normalised weights, sₖ the per-client peft scalings (default 1). Ranks may differ.
    """
    paired = _paired_states(states)
    p = normalise_weights(weights)
    s = _client_scalings(scalings, len(states))
    if len(p) != len(states):
        raise ValueError(f"{len(states)} client states but {len(p)} weights")
    out = {}
    for prefix in paired[0]:
        terms = []
        for pk, sk, pairs in zip(p, s, paired):
            a_mat, b_mat = to_matrices(*pairs[prefix])
            terms.append((pk * sk) * (b_mat.astype(np.float64) @ a_mat.astype(np.float64)))
        acc = terms[0]
        for term in terms[1:]:
            acc = acc + term
        out[prefix] = acc
    return out


# --------------------------------------------------------------------------------------------
# Exact / communication-saving rules
# --------------------------------------------------------------------------------------------


def _weighted_mean(arrays: Sequence[np.ndarray], p: np.ndarray) -> np.ndarray:
    acc = np.zeros(arrays[0].shape, dtype=np.float64)
    for pk, arr in zip(p, arrays):
        acc += pk * arr
    return acc


def ffa(states: Sequence[State], weights: Sequence[float], atol: float = 0.0) -> dict[str, np.ndarray]:
    """FFA-LoRA (Sun et al., ICLR 2024): A frozen at a shared seeded init, only B averaged.

    Because every client holds the same A, ``(Σₖ pₖ Bₖ) A = Σₖ pₖ Bₖ A`` — the average of the
    client updates, exactly (no FedIT cross terms). A is checked to be identical on every client
    (``atol=0`` means bit-identical; a ValueError names the module otherwise) and returned as
    client 0 sent it. Output dtype is the clients' dtype. Ranks, and hence scalings, are equal.
    """
    _check_same_layout(states)
    paired = [lora_pairs(s) for s in states]
    p = normalise_weights(weights)
    if len(p) != len(states):
        raise ValueError(f"{len(states)} client states but {len(p)} weights")
    dtype = _dtype(states)
    out = {}
    for prefix, (a0, _) in paired[0].items():
        for k, pairs in enumerate(paired[1:], start=1):
            a = pairs[prefix][0]
            same = np.array_equal(a, a0) if atol == 0 else np.allclose(a, a0, rtol=0.0, atol=atol)
            if not same:
                raise ValueError(
                    f"{lora_key(prefix, 'A')}: client {k} has a different A than client 0 "
                    "(FFA-LoRA needs A frozen at the same seeded init on every client)"
                )
        out[lora_key(prefix, "A")] = a0.astype(dtype, copy=True)
        out[lora_key(prefix, "B")] = _weighted_mean([pairs[prefix][1] for pairs in paired], p).astype(dtype)
    return out


def flora_stack(
    states: Sequence[State],
    weights: Sequence[float],
    scalings: Sequence[float] | None = None,
    out_scaling: float = 1.0,
) -> dict[str, np.ndarray]:
    """FLoRA (Wang et al., NeurIPS 2024): stack the clients' factors along the rank axis.

    Per module ``A_stack = [A₁; …; A_K]`` (rows) and ``B_stack = [p₁s₁B₁, …, p_K s_K B_K] / out_scaling``
    (columns), so ``out_scaling · B_stack @ A_stack = Σₖ pₖ sₖ Bₖ Aₖ`` exactly, for any per-client
    ranks rₖ (the block product has no cross terms). Returned with the same key names and rank
    Σₖ rₖ. With the default ``out_scaling=1`` the product is the real model update, to be merged
    into the base weights (FLoRA's use; clients then restart a fresh LoRA). To load the stack as a
    peft adapter of rank Σrₖ instead, pass that adapter's lora_alpha / Σrₖ.

    Cost: the download grows linearly with the number of clients (rank Σₖ rₖ per module).
    Putting pₖsₖ on B rather than A (FLoRA's repo weights A) is an equivalent choice.
    """
    paired = _paired_states(states)
    p = normalise_weights(weights)
    s = _client_scalings(scalings, len(states))
    if len(p) != len(states):
        raise ValueError(f"{len(states)} client states but {len(p)} weights")
    if not out_scaling:
        raise ValueError("out_scaling must be non-zero")
    dtype = _dtype(states)
    out = {}
    for prefix, (a0, b0) in paired[0].items():
        mats = [to_matrices(*pairs[prefix]) for pairs in paired]
        a_stack = np.concatenate([a.astype(np.float64) for a, _ in mats], axis=0)
        b_stack = np.concatenate(
            [(pk * sk / out_scaling) * b.astype(np.float64) for pk, sk, (_, b) in zip(p, s, mats)], axis=1
        )
        a_out, b_out = from_matrices(a_stack, b_stack, a0, b0)
        out[lora_key(prefix, "A")] = a_out.astype(dtype)
        out[lora_key(prefix, "B")] = b_out.astype(dtype)
    return out


def svd_refactor(
    states: Sequence[State],
    weights: Sequence[float],
    ranks: Sequence[int],
    scalings: Sequence[float] | None = None,
    out_scalings: Sequence[float] | None = None,
) -> list[dict[str, np.ndarray]]:
    """FlexLoRA-style (Bai et al., NeurIPS 2024): SVD of the mean update, truncated per rank.

    Per module ``W = Σₖ pₖ sₖ Bₖ Aₖ`` (ranks rₖ may differ between clients), then
    :func:`truncate` to every requested rank. Returns one state per entry of ``ranks``.
    """
    return truncate(mean_delta(states, weights, scalings), ranks, lora_pairs(states[0]), out_scalings, _dtype(states))


def truncate(
    target: Mapping[str, np.ndarray],
    ranks: Sequence[int],
    like: Mapping[str, tuple[np.ndarray, np.ndarray]],
    out_scalings: Sequence[float] | None = None,
    dtype: Any = np.float32,
) -> list[dict[str, np.ndarray]]:
    """Best rank-r LoRA factors of dense updates ``W = U S Vᵀ``, one state per requested rank.

    ``B = U_r √S_r``, ``A = √S_r V_rᵀ`` (each divided by √out_scaling when given, so that
    ``out_scaling · B @ A`` is the truncation): Eckart–Young, ‖W − B A‖²_F = Σ_{i>r} σᵢ², exact when
    r ≥ rank W. A requested r above min(d_out, d_in) is zero-padded to shape. Splitting √S onto
    both factors keeps them balanced for further training. ``like`` gives each module's template
    pair (kernel shape of conv LoRA); ``out_scalings[j]`` is the lora_alpha / ranks[j] the
    receiving adapter applies (default 1: the bare product).
    """
    ranks = [int(r) for r in ranks]
    if not ranks or any(r < 1 for r in ranks):
        raise ValueError(f"ranks must be positive integers, got {ranks}")
    out_s = _client_scalings(out_scalings, len(ranks), per="requested rank")
    if np.any(out_s <= 0):
        raise ValueError(f"out_scalings must be positive, got {list(out_scalings or [])}")
    outs: list[dict[str, np.ndarray]] = [{} for _ in ranks]
    for prefix, w in target.items():
        u, sv, vt = np.linalg.svd(np.asarray(w, dtype=np.float64), full_matrices=False)
        a0, b0 = like[prefix]
        for j, (r, so) in enumerate(zip(ranks, out_s)):
            m = min(r, len(sv))
            root = np.sqrt(sv[:m] / so)
            b_mat = np.zeros((w.shape[0], r))
            a_mat = np.zeros((r, w.shape[1]))
            b_mat[:, :m] = u[:, :m] * root
            a_mat[:m] = root[:, None] * vt[:m]
            a_out, b_out = from_matrices(a_mat, b_mat, a0, b0)
            outs[j][lora_key(prefix, "A")] = a_out.astype(dtype)
            outs[j][lora_key(prefix, "B")] = b_out.astype(dtype)
    return outs


def numerical_rank(target: Mapping[str, np.ndarray], rtol: float = 1e-6) -> int:
    """The largest number of singular values above ``rtol·σ_max`` over modules (at least 1)."""
    best = 1
    for w in target.values():
        sv = np.linalg.svd(np.asarray(w, dtype=np.float64), compute_uv=False)
        if len(sv) and sv[0] > 0:
            best = max(best, int(np.sum(sv > rtol * sv[0])))
    return best


def fill_dead_directions(state: State, init: State) -> dict[str, np.ndarray]:
    """Give rank slots whose A row and B column are both zero the init's A row (B stays 0).

    A truncated SVD of a rank-deficient mean (round 1's W is 0) yields all-zero pairs, whose
    gradients are zero forever; this restarts them like a fresh LoRA. B·A is unchanged exactly.
    """
    out = {k: np.array(v, copy=True) for k, v in state.items()}
    for prefix, (a, b) in lora_pairs(state).items():
        a_init = np.asarray(init[lora_key(prefix, "A")])
        if a_init.shape != a.shape:
            raise ValueError(f"{prefix}: init A {a_init.shape} does not match A {a.shape}")
        a_mat, b_mat = to_matrices(a, b)
        dead = ~np.any(a_mat != 0, axis=1) & ~np.any(b_mat != 0, axis=0)
        if dead.any():
            a_new = a_mat.copy()
            a_new[dead] = a_init.reshape(a_init.shape[0], -1)[dead]
            out[lora_key(prefix, "A")] = a_new.reshape(a.shape).astype(a.dtype)
    return out


def concat_ranks(stacks: Sequence[State]) -> dict[str, np.ndarray]:
    """Concatenate LoRA states along the rank axis: the product is the SUM of their products.

    How FLoRA delivers several rounds' stacks at once to a client that missed rounds.
    """
    if len(stacks) == 1:
        return {k: np.array(v, copy=True) for k, v in stacks[0].items()}
    m = len(stacks)
    return flora_stack(stacks, [1.0] * m, scalings=[float(m)] * m)


def fedsa(states: Sequence[State], weights: Sequence[float]) -> dict[str, np.ndarray]:
    """FedSA-LoRA (Guo et al., ICLR 2025): share and average only A; every B stays on its client.

    Returns ``{…lora_A.weight: Σₖ pₖ Aₖ}`` and no B key at all. Clients may send their B or not
    (B keys are ignored); any key that is neither factor is a ValueError. The client must keep
    its own B across rounds (in Flower simulation: in ``context.state``) and load the returned
    A next to it.
    """
    if not states:
        raise ValueError("nothing to aggregate: no client states")
    a_states = []
    for k, s in enumerate(states):
        for key in s:
            if not (key.endswith(A_SUFFIX) or key.endswith(B_SUFFIX)):
                raise ValueError(f"{key} (client {k}): not a LoRA factor")
        a_states.append({key: arr for key, arr in s.items() if key.endswith(A_SUFFIX)})
    if not a_states[0]:
        raise ValueError("FedSA-LoRA: client 0 sent no lora_A factors")
    _check_same_layout(a_states)
    p = normalise_weights(weights)
    if len(p) != len(states):
        raise ValueError(f"{len(states)} client states but {len(p)} weights")
    dtype = _dtype(a_states)
    return {key: _weighted_mean([s[key] for s in a_states], p).astype(dtype) for key in a_states[0]}
