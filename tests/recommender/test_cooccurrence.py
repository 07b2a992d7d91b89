"""The co-occurrence prior: its neighbour table is the kNN baseline's similarity kept sparse
(or, with a window, counts of nearby pairs), its scores are the recent item-kNN baseline's,
a candidate's score ignores the other candidates and masked history, its suggestions are the
latest items' unseen neighbours, weight 0 serves exactly what no prior serves, and retrieval
served with it is exact."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import phoenix_eqx as px
from phoenix_eqx.data.feature_hashes import feature_hashes
from phoenix_eqx.recommender.batches import windows
from phoenix_eqx.recommender.cooccurrence import (
    DECAY,
    SHRINKAGE,
    SUGGESTED_FROM,
    SUGGESTED_PER_ITEM,
    WINDOW,
    CooccurrencePrior,
    prior_scores,
)
from phoenix_eqx.recommender.models import build_models
from phoenix_eqx.training.baselines import (
    item_similarity,
    neighbour_lists,
    recency_profiles,
)

from ..helpers import TINY_FIT_OPTIONS


def _random_log(seed: int, num_users: int, num_items: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(1, num_items + 1, rng.integers(1, 30)) for _ in range(num_users)]


def _matrix(sequences: list[np.ndarray], num_items: int) -> np.ndarray:
    matrix = np.zeros((len(sequences), num_items + 1), bool)
    for user, sequence in enumerate(sequences):
        matrix[user, sequence] = True
    return matrix


@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 2**16), num_items=st.integers(2, 40), neighbours=st.integers(1, 50))
def test_neighbours_are_the_dense_similaritys_best_per_item(seed, num_items, neighbours):
    """Per item, the kept similarities are the dense `item_similarity`'s largest (ties may
    keep either item, with the same value), at the rows they name, listed in item order."""
    sequences = _random_log(seed, 30, num_items)
    matrix = _matrix(sequences, num_items)
    dense, everything = item_similarity(matrix, neighbours), item_similarity(matrix, num_items + 1)
    lists = neighbour_lists(sequences, num_items, neighbours)
    for item in range(1, num_items + 1):
        row = slice(lists.starts[item], lists.starts[item + 1])
        ids, similarities = lists.ids[row], lists.similarities[row]
        assert np.all(np.diff(ids) > 0) and np.all(similarities > 0)
        np.testing.assert_allclose(similarities, everything[ids, item], rtol=1e-6)
        best = np.sort(dense[:, item])[::-1][: ids.size]
        np.testing.assert_allclose(np.sort(similarities)[::-1], best, rtol=1e-6)
        assert np.count_nonzero(dense[:, item]) == ids.size


@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 2**16), window=st.integers(1, 4), neighbours=st.integers(1, 30))
def test_a_window_counts_the_pairs_that_stand_within_it(seed, window, neighbours):
    """With a window, two items' similarity is how often they stand within `window` positions
    of each other over the root of their occurrence counts' product (plus shrinkage); each
    item keeps its best (ties to the lower item), listed in item order."""
    num_items = 12
    sequences = _random_log(seed, 20, num_items)
    counts = np.zeros((num_items + 1, num_items + 1))
    for sequence in sequences:
        for offset in range(1, window + 1):
            for a, b in zip(sequence[:-offset], sequence[offset:], strict=True):
                counts[a, b] += 1
                counts[b, a] += 1
    np.fill_diagonal(counts, 0.0)
    occurrences = np.bincount(np.concatenate(sequences), minlength=num_items + 1)
    similarity = counts / (np.sqrt(np.outer(occurrences, occurrences)) + SHRINKAGE)
    lists = neighbour_lists(sequences, num_items, neighbours, SHRINKAGE, window)
    for item in range(num_items + 1):
        ids = lists.ids[lists.starts[item] : lists.starts[item + 1]]
        kept = lists.similarities[lists.starts[item] : lists.starts[item + 1]]
        expected = sorted(
            (other, similarity[item, other])
            for _, other in sorted(
                (-similarity[item, other], other)
                for other in range(1, num_items + 1)
                if similarity[item, other] > 0
            )[:neighbours]
        )
        np.testing.assert_array_equal(ids, [other for other, _ in expected])
        np.testing.assert_allclose(kept, [value for _, value in expected], rtol=1e-6)


@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 2**16), history_seq_len=st.sampled_from([WINDOW, 2 * WINDOW]))
def test_prior_is_the_recent_item_knn_score_of_each_candidate(seed, history_seq_len):
    """Whatever the other candidates: the prior of candidate `c` is the recent item-kNN
    baseline's score of `c` (recency profile times the similarity)."""
    num_items = 25
    sequences = _random_log(seed, 40, num_items)
    prior = CooccurrencePrior.of(sequences, num_items)
    dense = item_similarity(_matrix(sequences, num_items), 200)
    rng = np.random.default_rng(seed)
    histories = [rng.integers(1, num_items + 1, rng.integers(1, 50)) for _ in range(6)]
    expected = (
        recency_profiles(
            np.array([np.pad(h, (0, 60 - h.size)) for h in histories]),
            np.array([h.size for h in histories]),
            num_items,
            WINDOW,
            DECAY,
        )
        @ dense
    )
    window = windows(histories, history_seq_len)
    candidates = rng.integers(0, num_items + 1, (6, 7))
    scores = prior_scores(prior, window, candidates)
    np.testing.assert_allclose(
        scores, np.take_along_axis(expected, candidates, 1), rtol=1e-5, atol=1e-6
    )
    other = candidates.copy()
    other[:, 1:] = rng.integers(0, num_items + 1, (6, 6))
    np.testing.assert_array_equal(prior_scores(prior, window, other)[:, 0], scores[:, 0])


@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_suggestions_are_the_latest_items_unseen_neighbours_each_once(seed):
    """Every suggestion is one of the `SUGGESTED_PER_ITEM` nearest neighbours of one of the
    latest `SUGGESTED_FROM` items, appears once, and is neither excluded nor taken; every
    such neighbour that is neither is suggested."""
    num_items = 60
    sequences = _random_log(seed, 40, num_items)
    prior = CooccurrencePrior.of(sequences, num_items, window=2)
    lists = neighbour_lists(sequences, num_items, 200, SHRINKAGE, 2)
    rng = np.random.default_rng(seed)
    histories = [rng.integers(1, num_items + 1, rng.integers(0, 12)) for _ in range(5)]
    window = windows(histories, 8)
    exclude = windows([h[: rng.integers(0, h.size + 1)] for h in histories], 12)
    taken = rng.integers(0, num_items + 1, (5, 4))
    suggested = np.asarray(
        prior.suggestions(jnp.asarray(window), jnp.asarray(exclude), jnp.asarray(taken))
    )
    assert suggested.shape == (5, prior.num_suggested)
    for user, history in enumerate(histories):
        wanted = set()
        for item in history[-SUGGESTED_FROM:]:
            row = slice(lists.starts[item], lists.starts[item + 1])
            best = sorted(zip(-lists.similarities[row], lists.ids[row], strict=True))
            wanted |= {other for _, other in best[:SUGGESTED_PER_ITEM]}
        wanted -= set(exclude[user]) | set(taken[user]) | {0}
        found = suggested[user][suggested[user] > 0]
        assert len(set(found)) == found.size
        assert set(found) == wanted


def _recommenders_by_weight(
    options: px.FitOptions, num_items: int, num_users: int, seed: int, *, with_ranker: bool
) -> tuple[dict[float, px.Recommender], dict[int, np.ndarray]]:
    """Untrained Recommenders over one random log, one with prior weight 0 and one with 100,
    serving the ranker (validation says it was trained) or retrieval alone; and the log."""
    item_ids, user_ids = list(range(num_items)), list(range(num_users))
    rng = np.random.default_rng(seed)
    logs = {user: rng.choice(num_items, 10).astype(np.int32) + 1 for user in user_ids}
    features = feature_hashes(item_ids, user_ids)
    retriever, ranker = build_models(options, features, key=jax.random.key(seed))
    validation = {"retrieval": {"hr@10": 0.0}}
    if with_ranker:
        validation["ranker"] = {"hr@10": 0.0}
    made = {
        weight: px.Recommender(
            retriever,
            ranker,
            options,
            item_ids,
            logs,
            use_ranker=with_ranker,
            validation=validation,
            features=features,
            cooccurrence_weight=weight,
        )
        for weight in (0.0, 100.0)
    }
    return made, logs


def test_weight_zero_serves_what_no_prior_serves():
    """A Recommender whose prior has weight 0 is one without a prior (built only when the
    weight is positive), and a positive weight re-orders only the ranker's candidates."""
    options = dataclasses.replace(TINY_FIT_OPTIONS, num_retrieved=12)
    made, _ = _recommenders_by_weight(options, 30, 20, 0, with_ranker=True)
    user_ids = list(range(20))
    assert made[0.0].cooccurrence is None and made[100.0].cooccurrence is not None
    ranked, _ = made[0.0].recommend(user_ids, k=12)
    weighted, _ = made[100.0].recommend(user_ids, k=12)
    assert not np.array_equal(ranked, weighted)
    np.testing.assert_array_equal(np.sort(ranked, 1), np.sort(weighted, 1))


@pytest.mark.parametrize(("ranker_epochs", "window"), [(1, 0), (0, 2)])
def test_fit_chooses_the_weight_on_validation_and_a_save_keeps_it(
    walk_log, tmp_path, ranker_epochs, window
):
    """Fit records each weight's validation and serves the chosen one, with the ranker or,
    when it trains none, with retrieval; load serves the same."""
    users, items, times = walk_log(80, 30, 8)
    options = dataclasses.replace(
        TINY_FIT_OPTIONS,
        num_retrieved=12,
        ranker_epochs=ranker_epochs,
        cooccurrence_window=window,
        cooccurrence_weights=px.FitOptions().cooccurrence_weights,
    )
    rec = px.Recommender.fit(users, items, times, options=options)
    chosen = rec.validation["cooccurrence"]["weight"]
    assert chosen in options.cooccurrence_weights and rec.cooccurrence_weight == chosen
    rec.save(tmp_path / "model")
    loaded = px.Recommender.load(tmp_path / "model")
    assert loaded.cooccurrence_weight == chosen
    np.testing.assert_array_equal(
        loaded.recommend([0, 1, 2], k=5)[0], rec.recommend([0, 1, 2], k=5)[0]
    )


def test_retrieval_served_with_the_prior_is_exact():
    """Without a ranker the prior re-scores retrieval's items and its suggestions: what
    `recommend` serves is the full sort of `score_items`, never a seen item, and not what
    retrieval alone serves."""
    options = dataclasses.replace(TINY_FIT_OPTIONS, num_retrieved=6, cooccurrence_window=2)
    made, logs = _recommenders_by_weight(options, 40, 12, 1, with_ranker=False)
    item_ids, user_ids = list(range(40)), list(range(12))
    served, scores = made[100.0].recommend(user_ids, k=6)
    full = made[100.0].score_items(user_ids)
    order = np.argsort(-full, axis=1, kind="stable")[:, :6]
    np.testing.assert_array_equal(served, np.asarray(item_ids)[order])
    np.testing.assert_allclose(scores, np.take_along_axis(full, order, 1), rtol=1e-6)
    alone, _ = made[0.0].recommend(user_ids, k=6)
    assert not np.array_equal(served, alone)
    seen = [set(logs[user] - 1) for user in user_ids]
    assert not any(set(served[u]) & seen[u] for u in range(len(user_ids)))


def test_choosing_the_weight_reuses_retrievals_search_with_the_same_result(monkeypatch):
    from phoenix_eqx.recommender import two_stage as two_stage_module
    from phoenix_eqx.recommender.index import index_log
    from phoenix_eqx.recommender.validation import hold_out_last

    options = dataclasses.replace(
        TINY_FIT_OPTIONS, num_retrieved=10, cooccurrence_weights=(0.0, 1.0, 4.0)
    )
    rng = np.random.default_rng(5)
    users = np.repeat(np.arange(60), 12)
    items = rng.integers(0, 300, users.size)
    log = index_log(users, items, np.arange(users.size, dtype=float), None)
    features = feature_hashes(log.item_ids, log.user_ids)
    retriever, _ = build_models(options, features, key=jax.random.key(5))

    def made():
        train, _, validation = hold_out_last(log, features, options)
        return validation, CooccurrencePrior.of(train, len(log.item_ids))

    searched_again, prior = made()
    expected = searched_again.prior_weight_metrics(retriever, None, prior, options)
    validation, prior = made()
    assert not validation.prior_choice_reuses_search(retriever, options)
    validation.metrics(retriever, None, options)  # retrieval's validation: keeps its search
    assert validation.prior_choice_reuses_search(retriever, options)
    deeper = dataclasses.replace(options, num_retrieved=11)
    assert not validation.prior_choice_reuses_search(retriever, deeper)

    given_search = []
    serve = two_stage_module.two_stage

    def recording(*args):
        given_search.append(args[12] is not None)  # `searched`
        return serve(*args)

    monkeypatch.setattr(two_stage_module, "two_stage", recording)
    assert validation.prior_weight_metrics(retriever, None, prior, options) == expected
    assert given_search and all(given_search)
