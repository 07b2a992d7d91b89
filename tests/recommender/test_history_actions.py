"""History tokens that carry the log's actions (`ranker_history_actions="logged"`): action
masks round-trip, the ranker reads ratings that retrieval never sees, and `recommend`'s
`ratings` argument."""

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import phoenix_eqx as px
from phoenix_eqx.recommender.index import ENGAGED_MASK, action_masks, unpack_actions

from ..helpers import library_checks_only

NUM_ITEMS, NUM_USERS, LOG_LENGTH = 60, 600, 6
LOGGED = px.FitOptions(
    emb_size=16,
    key_size=8,
    num_heads=2,
    num_layers=1,
    history_seq_len=4,
    epochs=8,
    batch_size=64,
    learning_rate=2e-2,
    ranker_learning_rate=2e-2,
    table_init_std=1.0,
    patience=15,
    ranker_epochs=15,
    ranker_candidates=8,
    ranker_positions_per_user=4,
    ranker_history_actions="logged",
    num_retrieved=16,
    # Without the co-occurrence prior: what the ranker reads is what these tests measure.
    cooccurrence_weights=(0.0,),
    verbose=False,
)


def _rating_walks(seed: int, num_users: int) -> tuple[np.ndarray, np.ndarray]:
    """Users walking the items, each step 1 ahead after a 5-star rating and 2 ahead after a
    1-star one; ratings are fair coins. `[users, LOG_LENGTH + 1]` items and their ratings."""
    rng = np.random.default_rng(seed)
    ratings = rng.choice([1.0, 5.0], (num_users, LOG_LENGTH + 1))
    items = np.zeros((num_users, LOG_LENGTH + 1), np.int64)
    items[:, 0] = rng.integers(0, NUM_ITEMS, num_users)
    for step in range(LOG_LENGTH):
        items[:, step + 1] = (items[:, step] + np.where(ratings[:, step] == 5.0, 1, 2)) % NUM_ITEMS
    return items, ratings


@pytest.fixture(scope="module")
def fitted() -> px.Recommender:
    items, ratings = _rating_walks(0, NUM_USERS)
    return px.Recommender.fit(
        np.repeat(np.arange(NUM_USERS), LOG_LENGTH),
        items[:, :LOG_LENGTH].reshape(-1),
        np.tile(np.arange(LOG_LENGTH, dtype=float), NUM_USERS),
        ratings[:, :LOG_LENGTH].reshape(-1),
        options=LOGGED,
    )


@settings(max_examples=25, deadline=None)
@given(
    hnp.arrays(
        np.float32,
        st.tuples(st.integers(0, 5), st.just(len(px.ACTIONS))),
        elements=st.sampled_from([0.0, 1.0]),
    )
)
def test_action_masks_round_trip(actions):
    np.testing.assert_array_equal(unpack_actions(action_masks(actions)), actions)


def test_the_ranker_reads_the_rating_retrieval_cannot_see(fitted):
    """Planted: the next item depends on the last item's rating alone, so retrieval, whose
    history tokens all say "engaged", can at best toss a coin between the two successors; the
    ranker reading the ratings beats it on new users, and flipping their ratings flips its
    choice."""
    items, ratings = _rating_walks(1, 300)
    histories = [list(row) for row in items[:, :LOG_LENGTH]]
    new_users = list(range(NUM_USERS, NUM_USERS + 300))
    targets = items[:, LOG_LENGTH]

    def top_one(ratings, use_ranker):
        rows = [list(row) for row in ratings[:, :LOG_LENGTH]]
        top, _ = fitted.recommend(new_users, histories, k=1, ratings=rows, use_ranker=use_ranker)
        return (top[:, 0] == targets).mean()

    retrieval, ranker = top_one(ratings, False), top_one(ratings, True)
    flipped = top_one(6.0 - ratings, True)
    assert retrieval <= 0.65 and ranker >= retrieval + 0.15, (retrieval, ranker)
    assert flipped <= retrieval - 0.1, (retrieval, flipped)
    gain = fitted.validation["ranker_gain"]
    assert gain["ndcg@10"] > 2 * gain["ndcg@10_se"] > 0


def test_only_the_ranker_reads_ratings_and_only_when_logged(fitted):
    users, histories = [0, 1], [[3, 4, 6], [10, 12]]
    good, bad = [[5, 5, 5], [5, 5]], [[1, 1, 1], [1, 1]]
    for use_ranker, differ in ((False, False), (True, True)):
        scores = [
            fitted.score_items(users, histories, ratings=r, use_ranker=use_ranker)
            for r in (good, bad)
        ]
        assert (not np.array_equal(*scores)) == differ
    engaged = px.Recommender(
        fitted.retriever,
        fitted.ranker,
        dataclasses.replace(fitted.options, ranker_history_actions="engaged"),
        fitted.item_ids,
        fitted.histories,
        use_ranker=True,
        validation=fitted.validation,
        features=fitted.features,
        history_actions=fitted.history_actions,
    )
    scores = [engaged.score_items(users, histories, ratings=r) for r in (good, bad, None)]
    np.testing.assert_array_equal(scores[0], scores[1])
    np.testing.assert_array_equal(scores[0], scores[2])


def test_known_users_bring_their_logged_actions(fitted):
    """Without histories a known user is served from its log, ratings included: the same as
    passing its history and ratings, and not the same as its bare history (all engaged)."""
    items, ratings = _rating_walks(0, NUM_USERS)
    logged = fitted.score_items([0])
    with_ratings = fitted.score_items(
        [0], [list(items[0, :LOG_LENGTH])], ratings=[list(ratings[0, :LOG_LENGTH])]
    )
    np.testing.assert_array_equal(logged, with_ratings)
    assert not np.array_equal(logged, fitted.score_items([0], [list(items[0, :LOG_LENGTH])]))
    assert int(ENGAGED_MASK) not in set(fitted.history_actions[0].tolist())


@pytest.mark.parametrize(
    ("histories", "ratings", "message"),
    [
        (None, [[5.0]], r"ratings: expected None without histories"),
        ([[1, 2]], [[5.0], [4.0]], r"ratings: expected 1 sequences \(one per history\), got 2"),
        ([[1, 2]], [[5.0]], r"ratings\[0\]: expected shape \(2,\) like histories\[0\], got \(1,\)"),
        ([[1, 2]], [[5.0, float("nan")]], r"ratings\[0\]: expected no NaN"),
        ([[1, 2]], [["good", "bad"]], r"ratings\[0\]: expected numbers"),
    ],
)
def test_recommend_rejects_bad_ratings_naming_them(fitted, histories, ratings, message):
    with library_checks_only(), pytest.raises(ValueError, match=message):
        fitted.recommend([0], histories, ratings=ratings)
