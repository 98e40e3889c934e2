import numpy as np
import pytest

from fedlora.aggregation import (
    delta_weights,
    fedavg,
    fedsa,
    ffa,
    flora_stack,
    from_matrices,
    lora_pairs,
    mean_delta,
    normalise_weights,
    svd_refactor,
    to_matrices,
)


def random_clients(k=4, out=6, inn=5, r=3, seed=0):
    rng = np.random.default_rng(seed)
    return [
        {
            "l.lora_A.weight": rng.normal(size=(r, inn)).astype(np.float32),
            "l.lora_B.weight": rng.normal(size=(out, r)).astype(np.float32),
        }
        for _ in range(k)
    ]


def test_fedavg_is_the_weighted_mean_of_each_factor():
    states = random_clients()
    w = [1, 2, 3, 4]
    got = fedavg(states, w)
    p = np.array(w) / 10
    for key in states[0]:
        np.testing.assert_allclose(got[key], sum(pk * s[key] for pk, s in zip(p, states)), rtol=1e-6, atol=1e-6)


def test_fedavg_error_on_the_product_matches_the_closed_form():
    """sum_k p_k B_k A_k - B_bar A_bar = 1/2 sum_k sum_l p_k p_l (B_k - B_l)(A_k - A_l)."""
    states = random_clients(k=3)
    p = normalise_weights([0.2, 0.5, 0.3])
    A = [s["l.lora_A.weight"].astype(np.float64) for s in states]
    B = [s["l.lora_B.weight"].astype(np.float64) for s in states]
    avg = fedavg(states, p)
    exact = sum(pk * b @ a for pk, b, a in zip(p, B, A))
    error = exact - avg["l.lora_B.weight"].astype(np.float64) @ avg["l.lora_A.weight"].astype(np.float64)
    formula = 0.5 * sum(p[k] * p[j] * (B[k] - B[j]) @ (A[k] - A[j]) for k in range(3) for j in range(3))
    np.testing.assert_allclose(error, formula, atol=1e-5)
    assert np.abs(error).max() > 1e-2  # the naive rule really is inexact


def test_single_client_is_identity_and_errors_are_clear():
    s = random_clients(k=1)
    assert all(np.array_equal(fedavg(s, [5])[k], s[0][k]) for k in s[0])
    with pytest.raises(ValueError, match="different LoRA keys"):
        fedavg([s[0], {"x": np.zeros(1)}], [1, 1])
    with pytest.raises(ValueError, match="non-negative"):
        fedavg(random_clients(k=2), [0, 0])


# ---------------------------------------------------------------------------------------------
# exact / communication-saving rules
# ---------------------------------------------------------------------------------------------

LIN = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
CONV = "down_blocks.0.resnets.0.conv1"


def hetero_clients(ranks=(2, 4, 8), d_out=20, d_in=16, conv=(6, 5, 3, 3), dtype=np.float64, seed=1):
    """One linear and one conv LoRA pair per client, client k with rank ranks[k]."""
    rng = np.random.default_rng(seed)
    c_out, c_in, kh, kw = conv
    return [
        {
            f"{LIN}.lora_A.weight": rng.normal(size=(r, d_in)).astype(dtype),
            f"{LIN}.lora_B.weight": rng.normal(size=(d_out, r)).astype(dtype),
            f"{CONV}.lora_A.weight": rng.normal(size=(r, c_in, kh, kw)).astype(dtype),
            f"{CONV}.lora_B.weight": rng.normal(size=(c_out, r, 1, 1)).astype(dtype),
        }
        for r in ranks
    ]


def exact_mean(states, p, s=None):
    s = np.ones(len(states)) if s is None else s
    out = {}
    for prefix in (LIN, CONV):
        out[prefix] = sum(
            pk
            * sk
            * s_[f"{prefix}.lora_B.weight"].reshape(s_[f"{prefix}.lora_B.weight"].shape[0], -1)
            @ s_[f"{prefix}.lora_A.weight"].reshape(s_[f"{prefix}.lora_A.weight"].shape[0], -1)
            for pk, sk, s_ in zip(p, s, states)
        )
    return out


def product(state, prefix):
    a, b = to_matrices(state[f"{prefix}.lora_A.weight"], state[f"{prefix}.lora_B.weight"])
    return b.astype(np.float64) @ a.astype(np.float64)


def test_pair_helpers_group_flatten_and_error_clearly():
    (state,) = hetero_clients(ranks=(3,))
    pairs = lora_pairs(state)
    assert sorted(pairs) == sorted([LIN, CONV])
    a, b = pairs[CONV]
    a_mat, b_mat = to_matrices(a, b)
    assert a_mat.shape == (3, 5 * 3 * 3) and b_mat.shape == (6, 3)
    a2, b2 = from_matrices(a_mat, b_mat, a, b)
    assert np.array_equal(a2, a) and np.array_equal(b2, b)
    # the flattened product is the composed 1x1-after-kh×kw conv kernel
    kernel = np.einsum("or,rikl->oikl", b[:, :, 0, 0], a)
    np.testing.assert_allclose(delta_weights(state, scaling=2.0)[CONV], 2.0 * kernel.reshape(6, -1), atol=1e-12)

    broken = {k: v for k, v in state.items() if k != f"{LIN}.lora_B.weight"}
    with pytest.raises(
        ValueError, match=rf"incomplete LoRA pair: {LIN}\.lora_A\.weight has no matching {LIN}\.lora_B\.weight"
    ):
        lora_pairs(broken)
    with pytest.raises(ValueError, match="not a LoRA factor"):
        lora_pairs({**state, "conv_out.bias": np.zeros(3)})


def test_ffa_is_exact_and_rejects_differing_a():
    states = hetero_clients(ranks=(4, 4, 4))
    shared_a = {k: v for k, v in states[0].items() if ".lora_A." in k}
    for s in states:
        s.update({k: v.copy() for k, v in shared_a.items()})
    p = normalise_weights([3, 1, 2])
    got = ffa(states, [3, 1, 2])
    for k in shared_a:
        assert np.array_equal(got[k], shared_a[k])
    for prefix, want in exact_mean(states, p).items():
        np.testing.assert_allclose(product(got, prefix), want, rtol=1e-12, atol=1e-12)
    # float32 on the wire stays float32 and exact to float32 precision
    s32 = [{k: v.astype(np.float32) for k, v in s.items()} for s in states]
    got32 = ffa(s32, [3, 1, 2])
    assert all(v.dtype == np.float32 for v in got32.values())
    np.testing.assert_allclose(product(got32, LIN), exact_mean(states, p)[LIN], rtol=1e-5, atol=1e-5)

    states[2][f"{CONV}.lora_A.weight"] = states[2][f"{CONV}.lora_A.weight"] + 1e-9
    with pytest.raises(ValueError, match=rf"{CONV}\.lora_A\.weight: client 2 has a different A"):
        ffa(states, [1, 1, 1])


def test_flora_stack_is_exact_for_heterogeneous_ranks_and_conv():
    states = hetero_clients(ranks=(2, 4, 8))
    p = normalise_weights([5, 2, 3])
    s = np.array([16 / 2, 16 / 4, 16 / 8])  # peft alpha / r per client
    got = flora_stack(states, [5, 2, 3], scalings=s)
    assert got[f"{LIN}.lora_A.weight"].shape == (14, 16)
    assert got[f"{LIN}.lora_B.weight"].shape == (20, 14)
    assert got[f"{CONV}.lora_A.weight"].shape == (14, 5, 3, 3)
    assert got[f"{CONV}.lora_B.weight"].shape == (6, 14, 1, 1)
    want = exact_mean(states, p, s)
    for prefix in (LIN, CONV):
        np.testing.assert_allclose(product(got, prefix), want[prefix], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(mean_delta(states, [5, 2, 3], s)[prefix], want[prefix], rtol=1e-12, atol=1e-12)
    # loading the stack as a peft adapter with its own scaling: out_scaling * B @ A is still exact
    got2 = flora_stack(states, [5, 2, 3], scalings=s, out_scaling=16 / 14)
    np.testing.assert_allclose(16 / 14 * product(got2, CONV), want[CONV], rtol=1e-12, atol=1e-12)


def test_svd_refactor_is_exact_at_full_rank_and_eckart_young_below():
    states = hetero_clients(ranks=(2, 4, 8))
    w = [1, 2, 1]
    p = normalise_weights(w)
    want = exact_mean(states, p)
    # mean linear update has rank <= 14 (< min(20, 16)); the conv one rank <= min(6, 45) = 6
    ranks = [3, 6, 14, 20]
    outs = svd_refactor(states, w, ranks)
    assert len(outs) == len(ranks)
    for r, out in zip(ranks, outs):
        assert out[f"{LIN}.lora_A.weight"].shape == (r, 16)
        assert out[f"{LIN}.lora_B.weight"].shape == (20, r)
        assert out[f"{CONV}.lora_A.weight"].shape == (r, 5, 3, 3)
        assert out[f"{CONV}.lora_B.weight"].shape == (6, r, 1, 1)
        for prefix in (LIN, CONV):
            sv = np.linalg.svd(want[prefix], compute_uv=False)
            err2 = np.sum((product(out, prefix) - want[prefix]) ** 2)
            np.testing.assert_allclose(err2, np.sum(sv[r:] ** 2), rtol=1e-9, atol=1e-9)
            # balanced split: B = U sqrt(S), A = sqrt(S) V^T  =>  B^T B = A A^T = diag(S_r)
            a, b = to_matrices(out[f"{prefix}.lora_A.weight"], out[f"{prefix}.lora_B.weight"])
            np.testing.assert_allclose(b.T @ b, a @ a.T, atol=1e-9)
    # exact when r >= rank of the mean update
    for out in outs[2:]:
        for prefix in (LIN, CONV):
            np.testing.assert_allclose(product(out, prefix), want[prefix], rtol=1e-10, atol=1e-10)
    assert np.sum((product(outs[0], LIN) - want[LIN]) ** 2) > 1e-3  # truncation really loses something

    # scalings in, per-rank adapter scalings out
    s = [8.0, 4.0, 2.0]
    (out,) = svd_refactor(states, w, [14], scalings=s, out_scalings=[16 / 14])
    np.testing.assert_allclose(16 / 14 * product(out, LIN), exact_mean(states, p, s)[LIN], rtol=1e-10, atol=1e-10)


def test_fedsa_averages_a_only():
    states = hetero_clients(ranks=(4, 4, 4), dtype=np.float32)
    got = fedsa(states, [1, 1, 2])
    p = normalise_weights([1, 1, 2])
    assert sorted(got) == sorted([f"{LIN}.lora_A.weight", f"{CONV}.lora_A.weight"])
    for k in got:
        assert got[k].dtype == np.float32
        np.testing.assert_allclose(
            got[k], sum(pk * s[k].astype(np.float64) for pk, s in zip(p, states)), rtol=1e-6, atol=1e-6
        )
    # clients that send only A give the same result
    only_a = [{k: v for k, v in s.items() if ".lora_A." in k} for s in states]
    assert all(np.array_equal(got[k], v) for k, v in fedsa(only_a, [1, 1, 2]).items())
