import numpy as np
import pytest

from fedlora.aggregation import aggregate, fedavg, normalise_weights


def random_clients(k=4, out=6, inn=5, r=3, seed=0):
    rng = np.random.default_rng(seed)
    return [
        {"l.lora_A.weight": rng.normal(size=(r, inn)).astype(np.float32), "l.lora_B.weight": rng.normal(size=(out, r)).astype(np.float32)}
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
    formula = 0.5 * sum(p[k] * p[l] * (B[k] - B[l]) @ (A[k] - A[l]) for k in range(3) for l in range(3))
    np.testing.assert_allclose(error, formula, atol=1e-5)
    assert np.abs(error).max() > 1e-2  # the naive rule really is inexact


def test_single_client_is_identity_and_errors_are_clear():
    s = random_clients(k=1)
    assert all(np.array_equal(fedavg(s, [5])[k], s[0][k]) for k in s[0])
    with pytest.raises(ValueError, match="different LoRA keys"):
        fedavg([s[0], {"x": np.zeros(1)}], [1, 1])
    with pytest.raises(ValueError, match="non-negative"):
        fedavg(random_clients(k=2), [0, 0])
    with pytest.raises(ValueError, match="choose one of"):
        aggregate("median", s, [1])
