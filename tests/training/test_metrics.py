"""Metric properties: perfect scores give 1, constant scores the chance level, user order and
monotone rescaling change nothing, and known values on small cases."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from phoenix_eqx.training import (
    calibration,
    full_ranking_metrics,
    full_ranking_per_user,
    log_loss,
    paired_difference,
    per_user_retrieval_metrics,
    pr_auc,
    ranking_metrics,
    relevance_from_targets,
    retrieval_metrics,
    roc_auc,
)

from ..helpers import library_checks_only

KS = (1, 3, 10)


def _labels(seed, n=40, rate=0.3):
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < rate).astype(float)
    labels[:2] = [0.0, 1.0]  # both classes present
    return rng, labels


@given(seed=st.integers(0, 2**16))
def test_auc_perfect_constant_and_reversed(seed):
    rng, labels = _labels(seed)
    perfect = labels + rng.uniform(0, 0.5, labels.size)
    assert roc_auc(perfect, labels) == pytest.approx(1.0)
    assert pr_auc(perfect, labels) == pytest.approx(1.0)
    assert roc_auc(-perfect, labels) == pytest.approx(0.0)
    constant = np.full(labels.size, 0.3)
    assert roc_auc(constant, labels) == pytest.approx(0.5)
    assert pr_auc(constant, labels) == pytest.approx(labels.mean())


@given(seed=st.integers(0, 2**16))
def test_auc_is_invariant_to_order_and_monotone_maps(seed):
    rng, labels = _labels(seed)
    scores = np.round(rng.normal(size=labels.size), 1)  # with ties
    order = rng.permutation(labels.size)
    for metric in (roc_auc, pr_auc):
        value = metric(scores, labels)
        assert metric(scores[order], labels[order]) == pytest.approx(value)
        assert metric(np.exp(scores), labels) == pytest.approx(value)


@given(seed=st.integers(0, 2**16))
def test_roc_auc_counts_ordered_pairs(seed):
    rng, labels = _labels(seed, n=25)
    scores = rng.integers(0, 5, labels.size).astype(float)
    positives, negatives = scores[labels == 1], scores[labels == 0]
    wins = (positives[:, None] > negatives[None]).sum() + 0.5 * (
        positives[:, None] == negatives[None]
    ).sum()
    assert roc_auc(scores, labels) == pytest.approx(wins / (positives.size * negatives.size))


def test_pr_auc_known_value():
    # Ranked: +, -, +, -  -> precision 1 at recall 1/2, 2/3 at recall 1.
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    labels = np.array([1.0, 0.0, 1.0, 0.0])
    assert pr_auc(scores, labels) == pytest.approx(0.5 * 1.0 + 0.5 * 2 / 3)


def test_undefined_auc_is_nan():
    assert np.isnan(roc_auc(np.ones(3), np.ones(3)))
    assert np.isnan(pr_auc(np.ones(3), np.zeros(3)))


def test_log_loss_and_calibration():
    labels = np.array([1.0, 0.0, 1.0, 0.0])
    probabilities = np.array([0.8, 0.2, 0.6, 0.4])
    expected = -np.mean(np.log([0.8, 0.8, 0.6, 0.6]))
    assert log_loss(probabilities, labels) == pytest.approx(expected)
    assert calibration(probabilities, labels) == pytest.approx(1.0)
    assert calibration(probabilities / 2, labels) == pytest.approx(0.5)
    assert log_loss(labels, labels) < 1e-6  # perfect (clipped) predictions


def test_ranking_metrics_per_action_skip_one_class_actions_and_padding():
    rng = np.random.default_rng(0)
    labels = (rng.random((5, 4, 3)) < 0.4).astype(float)
    labels[..., 2] = 0.0  # never observed: left out
    valid = np.ones((5, 4), bool)
    valid[:, 3] = False
    probabilities = np.where(valid[..., None], labels * 0.5 + 0.25, 0.99)
    labels[:, 3] = 1 - labels[:, 3]  # padding slots would be wrong: they must not count
    results = ranking_metrics(probabilities, labels, valid, ("a", "b", "c"))
    assert set(results) == {"a", "b"}
    for values in results.values():
        assert values["roc_auc"] == pytest.approx(1.0)
        assert values["pr_auc"] == pytest.approx(1.0)


def _retrieval_case(seed, users=6, items=30):
    rng = np.random.default_rng(seed)
    relevant = np.zeros((users, items), bool)
    exclude = np.zeros((users, items), bool)
    for user in range(users):
        chosen = rng.choice(items, size=6, replace=False)
        relevant[user, chosen[: rng.integers(1, 3)]] = True
        exclude[user, chosen[3:]] = True
    return rng, relevant, exclude


@given(seed=st.integers(0, 2**16))
def test_retrieval_perfect_scores_give_one(seed):
    rng, relevant, exclude = _retrieval_case(seed)
    scores = relevant + rng.uniform(0, 0.5, relevant.shape)
    # Excluded items would outrank everything; they must not count.
    scores[exclude] = 10.0
    results = retrieval_metrics(scores, relevant, exclude, KS)
    for k in KS:
        assert results[f"hit_rate@{k}"] == pytest.approx(1.0)
        assert results[f"ndcg@{k}"] == pytest.approx(1.0)
    assert results["recall@3"] == pytest.approx(1.0)


@given(seed=st.integers(0, 2**16))
def test_retrieval_constant_scores_give_the_chance_level(seed):
    _, relevant, exclude = _retrieval_case(seed)
    results = per_user_retrieval_metrics(np.zeros(relevant.shape), relevant, exclude, KS)
    candidates = (~exclude).sum(axis=1)
    num_relevant = (relevant & ~exclude).sum(axis=1)
    for k in KS:
        np.testing.assert_allclose(results[f"recall@{k}"], k / candidates)
        miss = np.array(
            [
                np.prod([(n - r - i) / (n - i) for i in range(k)])
                for n, r in zip(candidates, num_relevant, strict=True)
            ]
        )
        np.testing.assert_allclose(results[f"hit_rate@{k}"], 1 - miss)
        # Expected DCG: each relevant item is equally likely at every position.
        discounts = 1 / np.log2(np.arange(2, candidates.max() + 2))
        dcg = num_relevant * np.array([discounts[:k].sum() / n for n in candidates])
        ideal = np.array([discounts[: min(r, k)].sum() for r in num_relevant])
        np.testing.assert_allclose(results[f"ndcg@{k}"], dcg / ideal)


@given(seed=st.integers(0, 2**16))
def test_retrieval_metrics_ignore_user_and_item_order(seed):
    rng, relevant, exclude = _retrieval_case(seed)
    scores = np.round(rng.normal(size=relevant.shape), 1)
    base = retrieval_metrics(scores, relevant, exclude, KS)
    users = rng.permutation(relevant.shape[0])
    items = rng.permutation(relevant.shape[1])
    shuffled = retrieval_metrics(
        scores[users][:, items], relevant[users][:, items], exclude[users][:, items], KS
    )
    for name, value in base.items():
        assert shuffled[name] == pytest.approx(value)


def test_retrieval_known_ranks():
    # One relevant item at rank 3 (two items above it, no ties).
    scores = np.array([[0.9, 0.8, 0.7, 0.1, 0.0]])
    relevant = relevance_from_targets(np.array([2]), 5)
    results = retrieval_metrics(scores, relevant, ks=(1, 2, 3))
    assert results["recall@2"] == 0.0 and results["recall@3"] == 1.0
    assert results["ndcg@3"] == pytest.approx(1 / np.log2(4))
    # Excluding an item above it moves it up one place.
    exclude = np.array([[True, False, False, False, False]])
    assert retrieval_metrics(scores, relevant, exclude, (2,))["recall@2"] == 1.0


def test_retrieval_users_without_relevant_items_are_skipped():
    scores = np.array([[0.9, 0.1], [0.2, 0.8]])
    relevant = relevance_from_targets(np.array([0, -1]), 2)
    per_user = per_user_retrieval_metrics(scores, relevant, ks=(1,))
    assert per_user["recall@1"][0] == 1.0 and np.isnan(per_user["recall@1"][1])
    assert retrieval_metrics(scores, relevant, ks=(1,))["recall@1"] == 1.0


@library_checks_only()
def test_retrieval_metrics_reject_bad_input():
    scores = np.zeros((2, 3))
    with pytest.raises(ValueError, match="relevant"):
        retrieval_metrics(scores, np.zeros((2, 4), bool))
    with pytest.raises(ValueError, match="ks"):
        retrieval_metrics(scores, np.zeros((2, 3), bool), ks=(0,))
    with pytest.raises(ValueError, match="scores"):
        retrieval_metrics(np.full((2, 3), np.nan), np.zeros((2, 3), bool))


def _oracle_full_ranking(scores, targets, seen, ranked, ks, exclude_seen):
    """Brute force: average the target's hit and gain over every place it can take among the
    items tied with it; None for a user whose target is not ranked."""
    per_user = []
    for user, target in enumerate(targets):
        candidates = [i for i in range(scores.shape[1]) if ranked[i]]
        if exclude_seen:
            candidates = [i for i in candidates if not seen[user, i]]
        if target not in candidates:
            per_user.append(None)
            continue
        score = scores[user, target]
        above = sum(scores[user, i] > score for i in candidates)
        tied = sum(scores[user, i] == score for i in candidates)
        places = [above + 1 + j for j in range(tied)]
        values = {}
        for k in ks:
            values[f"hit_rate@{k}"] = np.mean([place <= k for place in places])
            values[f"ndcg@{k}"] = np.mean([(place <= k) / np.log2(place + 1) for place in places])
        per_user.append(values)
    counted = [values for values in per_user if values is not None]
    return {name: np.mean([values[name] for values in counted]) for name in counted[0]}


@given(seed=st.integers(0, 2**16), chunk_size=st.integers(1, 7))
def test_full_ranking_matches_a_brute_force_oracle(seed, chunk_size):
    rng = np.random.default_rng(seed)
    users, items, ks = 7, 12, (1, 3, 10)
    scores = rng.integers(0, 4, (users, items)).astype(float)  # many ties
    ranked = rng.random(items) < 0.85
    targets = rng.choice(np.flatnonzero(ranked), users)
    seen = rng.random((users, items)) < 0.3
    seen[0, targets[0]] = False  # at least one user counts with its history excluded
    results = full_ranking_metrics(
        lambda rows: scores[rows], targets, seen, ks, ranked_items=ranked, chunk_size=chunk_size
    )
    dense = full_ranking_metrics(scores, targets, seen, ks, ranked_items=ranked)
    repeated = full_ranking_per_user(scores, targets, seen, (*ks, ks[-1]), ranked_items=ranked)
    assert all(len(values) == users for values in repeated["seen_included"].values())
    for mode, exclude_seen in (("seen_excluded", True), ("seen_included", False)):
        expected = _oracle_full_ranking(scores, targets, seen, ranked, ks, exclude_seen)
        for name, value in expected.items():
            assert results[mode][name] == pytest.approx(value)
            assert dense[mode][name] == pytest.approx(value)


def test_full_ranking_constant_scores_give_the_chance_level():
    items = 40
    seen = np.zeros((3, items), bool)
    seen[:, 10:20] = True
    results = full_ranking_metrics(np.zeros((3, items)), np.array([0, 1, 2]), seen, (10,))
    assert results["seen_included"]["hit_rate@10"] == pytest.approx(10 / 40)
    assert results["seen_excluded"]["hit_rate@10"] == pytest.approx(10 / 30)


@library_checks_only()
def test_full_ranking_rejects_bad_input():
    scores, seen, targets = np.zeros((2, 3)), np.zeros((2, 3), bool), np.array([0, 2])
    with pytest.raises(ValueError, match="seen"):
        full_ranking_metrics(scores, targets, np.zeros((3, 3), bool))
    with pytest.raises(ValueError, match="targets"):
        full_ranking_metrics(scores, np.array([0, 3]), seen)
    with pytest.raises(ValueError, match="targets"):
        full_ranking_metrics(scores, targets, seen, ranked_items=np.array([True, True, False]))
    with pytest.raises(ValueError, match="scores"):
        full_ranking_metrics(lambda rows: np.zeros((len(rows), 4)), targets, seen)
    with pytest.raises(ValueError, match="scores"):
        full_ranking_metrics(np.full((2, 3), np.nan), targets, seen)
    with pytest.raises(ValueError, match="chunk_size"):
        full_ranking_metrics(scores, targets, seen, chunk_size=0)


@given(seed=st.integers(0, 2**16))
def test_paired_difference_of_per_user_metrics(seed):
    rng = np.random.default_rng(seed)
    users, items = 9, 15
    seen = rng.random((users, items)) < 0.3
    targets = rng.integers(0, items, users)
    first, second = rng.normal(size=(users, items)), rng.normal(size=(users, items))
    per_user = [full_ranking_per_user(scores, targets, seen, (5,)) for scores in (first, second)]
    for mode in ("seen_excluded", "seen_included"):
        a, b = (result[mode]["hit_rate@5"] for result in per_user)
        counted = ~(np.isnan(a) | np.isnan(b))
        if counted.sum() < 2:
            continue
        paired = paired_difference(a, b)
        # The difference of the two averages (both count the same users here) ...
        means = [
            full_ranking_metrics(s, targets, seen, (5,))[mode]["hit_rate@5"]
            for s in (first, second)
        ]
        assert paired["difference"] == pytest.approx(means[0] - means[1])
        # ... with the standard error of a mean of per-user differences.
        differences = a[counted] - b[counted]
        assert paired["standard_error"] == pytest.approx(
            np.std(differences, ddof=1) / np.sqrt(counted.sum())
        )
        assert paired["users"] == counted.sum()
        # Swapping the models flips the sign, not the noise.
        swapped = paired_difference(b, a)
        assert swapped["difference"] == pytest.approx(-paired["difference"])
        assert swapped["standard_error"] == pytest.approx(paired["standard_error"])


@library_checks_only()
def test_paired_difference_rejects_unpaired_input():
    with pytest.raises(ValueError, match="second: expected shape"):
        paired_difference(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="two or more users"):
        paired_difference(np.array([1.0, np.nan]), np.array([np.nan, 0.0]))
