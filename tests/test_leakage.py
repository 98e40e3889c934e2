"""Leakage metrics against scikit-learn and hand-made ROC curves; the attacks on known signals."""

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, roc_auc_score, roc_curve

from fedlora.config import EvaluationConfig
from fedlora.evaluation.attacks import AttackSets, Samples, run_attacks
from fedlora.evaluation.attacks.learned_mlp import learned_mlp_attacks
from fedlora.evaluation.attacks.loss_threshold import loss_threshold_attack
from fedlora.evaluation.leakage import (
    LEAKAGE_KEYS,
    attack_success_rate,
    best_threshold,
    leakage_metrics,
    tpr_at_fpr,
)


def test_metrics_match_sklearn_on_random_scores():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300).astype(bool)
    scores = rng.normal(size=300) + 0.8 * labels
    m = leakage_metrics(scores, labels, threshold=0.4)
    auc = roc_auc_score(labels, scores)
    assert m["auc"] == pytest.approx(auc)
    assert m["auc_dev"] == pytest.approx(abs(auc - 0.5) / 0.5)
    assert m["asr"] == pytest.approx(accuracy_score(labels, scores >= 0.4))
    fpr, tpr, _ = roc_curve(labels, scores)
    assert m["tpr_at_5pct_fpr"] == pytest.approx(tpr[fpr <= 0.05].max())
    assert (m["n_members"], m["n_nonmembers"]) == (labels.sum(), (~labels).sum())
    assert set(LEAKAGE_KEYS) == set(m)


def test_tpr_at_fixed_fpr_on_a_hand_made_roc():
    fpr = np.array([0.0, 0.0, 0.005, 0.02, 0.05, 0.2, 1.0])
    tpr = np.array([0.0, 0.1, 0.3, 0.35, 0.6, 0.9, 1.0])
    assert tpr_at_fpr(fpr, tpr, 0.01) == pytest.approx(0.3)
    assert tpr_at_fpr(fpr, tpr, 0.05) == pytest.approx(0.6)
    assert tpr_at_fpr(fpr, tpr, 0.001) == pytest.approx(0.1)
    assert tpr_at_fpr(np.array([0.5, 1.0]), np.array([0.7, 1.0]), 0.01) == 0.0


def test_hand_computed_small_case():
    # members score 0.9, 0.8, 0.3; non-members 0.6, 0.2, 0.1 -> 8 of 9 pairs ordered: AUC = 8/9
    scores = np.array([0.9, 0.8, 0.3, 0.6, 0.2, 0.1])
    labels = np.array([1, 1, 1, 0, 0, 0], dtype=bool)
    m = leakage_metrics(scores, labels, threshold=0.5)
    assert m["auc"] == pytest.approx(8 / 9)
    assert m["asr"] == pytest.approx(4 / 6)
    fpr, tpr = roc_curve(labels, scores)[:2]
    assert tpr_at_fpr(fpr, tpr, 0.01) == pytest.approx(2 / 3)  # 0.9 and 0.8 rank above every non-member
    assert m["tpr_at_1pct_fpr"] is None  # ... but 3 non-members cannot resolve a 1 % FPR


def test_inverted_signal_leaks_as_much_as_the_signal():
    rng = np.random.default_rng(1)
    labels = np.repeat([True, False], 100)
    scores = rng.normal(size=200) + 2 * labels
    assert leakage_metrics(scores, labels, 0)["auc_dev"] == pytest.approx(
        leakage_metrics(-scores, labels, 0)["auc_dev"]
    )


def test_best_threshold_separates_separable_scores():
    scores = np.array([0.1, 0.2, 0.35, 0.6, 0.7, 0.9])
    labels = np.array([0, 0, 0, 1, 1, 1], dtype=bool)
    t = best_threshold(scores, labels)
    assert 0.35 < t < 0.6
    assert attack_success_rate(scores, labels, t) == 1.0


def test_metrics_refuse_one_class_or_bad_shapes():
    with pytest.raises(ValueError, match="both members and non-members"):
        leakage_metrics(np.ones(4), np.ones(4, dtype=bool), 0.5)
    with pytest.raises(ValueError, match="3 scores but 4 labels"):
        leakage_metrics(np.ones(3), np.array([1, 0, 1, 0]), 0.5)


class FakeModel:
    """Loss maps whose scale carries membership: members' errors are ``shrink`` times smaller."""

    def __init__(self, shrink: float):
        self.shrink = shrink

    def loss_maps(self, samples, gen):
        noise = torch.rand(samples.latents.shape, generator=gen) + 0.5
        return noise * torch.where(samples.cond[:, :1, :1, None] > 0, self.shrink, 1.0)

    def mean_loss(self, samples, draws, seed):
        gen = torch.Generator().manual_seed(seed)
        return torch.stack([self.loss_maps(samples, gen).mean((1, 2, 3)) for _ in range(draws)]).mean(0)


def _sets(n: int) -> AttackSets:
    def make(member: bool) -> Samples:
        return Samples(torch.zeros(n, 2, 2, 2), torch.full((n, 1, 1), 1.0 if member else -1.0))

    return AttackSets(make(True), make(False), make(True), make(False))


def test_attacks_find_a_planted_signal_and_not_an_absent_one():
    cfg = EvaluationConfig(attack_epochs=15, attack_learning_rate=3e-3, attack_batch_size=8)
    leaky = run_attacks(FakeModel(0.5), _sets(40), cfg, seed=0)
    assert list(leaky) == list(cfg.attacks)
    for name, r in leaky.items():
        assert r.metrics["asr"] > 0.9, name
        assert r.metrics["n_members"] == 40 and r.metrics["n_nonmembers"] == 40
    blind = run_attacks(FakeModel(1.0), _sets(40), cfg, seed=0)
    assert blind["learned-mlp"].metrics["asr"] < 0.7
    assert blind["loss-threshold"].metrics["auc_dev"] < 0.4


def test_honest_selection_never_looks_at_the_test_set():
    """Swapping D_te's members and non-members leaves the honest epoch and threshold unchanged; the
    paper's test-selected epoch is free to move (that is what makes it optimistic)."""
    cfg = EvaluationConfig(attack_epochs=8, attack_learning_rate=1e-3, attack_batch_size=4)
    sets = _sets(24)
    swapped = AttackSets(sets.member_aux, sets.nonmember_aux, sets.nonmember_test, sets.member_test)
    a = learned_mlp_attacks(FakeModel(0.85), sets, cfg, seed=0)["learned-mlp"]
    b = learned_mlp_attacks(FakeModel(0.85), swapped, cfg, seed=0)["learned-mlp"]
    assert a.details["epoch"] == b.details["epoch"] and a.details["threshold"] == b.details["threshold"]
    assert a.details["val_auc"] == b.details["val_auc"] and a.details["n_val"] == 12  # 25 % of 24 + 24
    assert a.metrics["auc"] != b.metrics["auc"]  # ... while its test numbers did change


def test_loss_threshold_draws_are_reproducible():
    a = loss_threshold_attack(FakeModel(0.9), _sets(10), draws=3, seed=4)
    b = loss_threshold_attack(FakeModel(0.9), _sets(10), draws=3, seed=4)
    assert a.metrics == b.metrics


def test_low_fpr_tpr_is_reported_only_where_the_non_members_resolve_it():
    rng = np.random.default_rng(3)
    labels = np.repeat([True, False], [50, 150])
    scores = rng.normal(size=200) + 1.5 * labels
    m = leakage_metrics(scores, labels, 0.0)
    assert m["tpr_at_1pct_fpr"] is not None and m["tpr_at_5pct_fpr"] is not None  # 150 >= 100, >= 20
    assert m["tpr_at_0.1pct_fpr"] is None and "150 non-members" in m["unmeasurable"]["tpr_at_0.1pct_fpr"]
    small = leakage_metrics(scores[:62], labels[:62], 0.0)  # 50 members, 12 non-members
    assert small["tpr_at_5pct_fpr"] is None and small["tpr_at_1pct_fpr"] is None
    assert {"tpr_at_0.1pct_fpr", "tpr_at_1pct_fpr", "tpr_at_5pct_fpr"} <= set(small["unmeasurable"])
    big = np.repeat([True, False], [100, 1000])
    assert leakage_metrics(rng.normal(size=1100) + big, big, 0.0)["tpr_at_0.1pct_fpr"] is not None


def test_aux_threshold_tpr_is_what_a_threshold_fixed_on_aux_gives_on_test():
    from fedlora.evaluation.leakage import aux_fpr_threshold

    neg = np.arange(100, dtype=float)  # aux non-members 0..99
    tau = aux_fpr_threshold(neg, 0.05)
    assert np.sum(neg >= tau) == 5 and np.sum(neg >= np.nextafter(tau, -np.inf)) == 6  # the lowest such
    assert aux_fpr_threshold(neg, 0.001) > neg.max()  # no aux non-member may pass: above all of them

    rng = np.random.default_rng(5)
    aux_labels = np.repeat([True, False], [100, 200])
    aux_scores = rng.normal(size=300) + 2 * aux_labels
    test_labels = np.repeat([True, False], [100, 200])
    shifted = (
        rng.normal(size=300) + 2 * test_labels + 1.0
    )  # test scores sit 1 higher: the aux threshold transfers badly
    m = leakage_metrics(shifted, test_labels, 0.0, aux=(aux_scores, aux_labels))
    assert m["n_aux_nonmembers"] == 200
    tau = aux_fpr_threshold(aux_scores[~aux_labels], 0.05)
    assert m["tpr_at_5pct_fpr_aux"] == np.mean(shifted[test_labels] >= tau)
    assert m["fpr_at_5pct_fpr_aux"] == np.mean(shifted[~test_labels] >= tau) > 0.1  # far above the 5 % aimed at
    assert m["tpr_at_5pct_fpr"] < m["tpr_at_5pct_fpr_aux"]  # the test-ROC oracle keeps FPR at 5 %: lower TPR
    assert m["tpr_at_1pct_fpr_aux"] is not None and m["tpr_at_0.1pct_fpr_aux"] is None  # 200 aux non-members
    assert "200 aux non-members" in m["unmeasurable"]["tpr_at_0.1pct_fpr_aux"]
    plain = leakage_metrics(shifted, test_labels, 0.0)
    assert plain["tpr_at_5pct_fpr_aux"] is None and "no held-out aux" in plain["unmeasurable"]["tpr_at_5pct_fpr_aux"]


def test_auc_interval_covers_the_auc_and_shrinks_with_more_samples():
    from fedlora.evaluation.leakage import auc_interval

    rng = np.random.default_rng(4)

    def width(n):
        labels = np.repeat([True, False], n)
        scores = rng.normal(size=2 * n) + labels
        lo, hi = auc_interval(scores, labels, seed=1)
        assert lo <= roc_auc_score(labels, scores) <= hi
        return hi - lo

    assert width(400) < 0.6 * width(40)
    labels = np.repeat([True, False], 30)
    scores = rng.normal(size=60)
    assert auc_interval(scores, labels, seed=2) == auc_interval(scores, labels, seed=2)  # seeded
    m = leakage_metrics(scores, labels, 0.0)
    assert m["auc_ci_low"] <= m["auc"] <= m["auc_ci_high"]


def test_the_verdict_picks_the_farthest_attack_and_corrects_for_the_choice():
    from fedlora.evaluation.attacks.base import attack_result
    from fedlora.evaluation.verdict import run_verdict

    rng = np.random.default_rng(7)
    labels = np.repeat([True, False], 60)

    def result(shift):
        return attack_result(rng.normal(size=120) + shift * labels, labels, 0.0)

    strong, inverted, blind = result(1.5), result(-0.8), result(0.0)
    v = run_verdict({"a": blind, "b": inverted, "c": strong}, {"0": {"a": blind, "c": result(0.0)}})
    g = v["global"]
    assert g["best_attack"] == "c" and g["attacks"] == 3 and g["comparisons"] == 3 and g["leaks"]
    lo, hi = g["auc_ci_corrected"]
    assert lo <= g["auc_ci"][0] and hi >= g["auc_ci"][1]  # the corrected interval is the wider one
    assert g["corrected_level"] == pytest.approx(1 - 0.05 / 3)
    c = v["clients"]["0"]
    assert c["comparisons"] == 2 and not c["leaks"] and v["clients_leaking"] == 0
    only_inverted = run_verdict({"b": inverted}, {})["global"]
    assert only_inverted["leaks"] and only_inverted["auc"] < 0.5  # an inverted signal leaks as much
