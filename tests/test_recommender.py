"""`Recommender`: fit on a planted-pattern log, recommend, bad inputs, save/load round trip."""

import math
import warnings

import numpy as np
import pytest

import phoenix_eqx as px

from .helpers import library_checks_only

NUM_ITEMS, NUM_USERS, LOG_LENGTH = 120, 240, 10
QUICK = px.FitOptions(
    emb_size=16,
    key_size=8,
    num_heads=2,
    num_layers=1,
    history_seq_len=12,
    epochs=12,
    batch_size=64,
    learning_rate=2e-2,
    patience=12,
    ranker_epochs=1,
    ranker_candidates=8,
    num_retrieved=16,
    verbose=False,
)


def _planted_log(seed: int = 0):
    """Each user walks the items in order from a random start (string ids): the next item is
    always the successor of the last. Each user's step `LOG_LENGTH` is kept out as a test."""
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, NUM_ITEMS, NUM_USERS)
    walks = (starts[:, None] + np.arange(LOG_LENGTH + 1)[None, :]) % NUM_ITEMS
    names = np.array([f"item-{i}" for i in range(NUM_ITEMS)])
    users = np.repeat([f"user-{u}" for u in range(NUM_USERS)], LOG_LENGTH)
    times = np.tile(np.arange(LOG_LENGTH, dtype=float), NUM_USERS)
    return users, names[walks[:, :-1]].reshape(-1), times, names[walks]


@pytest.fixture(scope="module")
def fitted():
    users, items, times, walks = _planted_log()
    return px.Recommender.fit(users, items, times, options=QUICK), walks


def test_fit_recovers_the_planted_pattern_far_above_chance(fitted):
    rec, walks = fitted
    user_ids = [f"user-{u}" for u in range(NUM_USERS)]
    top, scores = rec.recommend(user_ids, list(walks[:, :-1]), k=10)
    assert top.shape == scores.shape == (NUM_USERS, 10)
    assert np.all(np.diff(scores, axis=1) <= 0)
    recall = np.mean([walks[u, -1] in top[u] for u in range(NUM_USERS)])
    # Chance: 10 of the NUM_ITEMS - LOG_LENGTH unseen items.
    chance = 10 / (NUM_ITEMS - LOG_LENGTH)
    assert recall >= 5 * chance, (recall, chance)
    assert not any(set(top[u]) & set(walks[u, :-1]) for u in range(NUM_USERS))
    assert set(rec.validation) <= {"retrieval", "ranker"}
    assert rec.validation["retrieval"]["hr@10"] >= 5 * chance


def test_recommend_drops_unknown_items_with_one_warning_and_serves_new_users(fitted):
    rec, _ = fitted
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        top, _ = rec.recommend(["new-user", "user-3"], [["item-5", "nope", "?"], ["x"]], k=3)
    assert [str(w.message) for w in caught] == [
        "histories: dropped 3 item ids unknown to the model"
    ]
    assert top.shape == (2, 3) and "item-5" not in top[0]
    kept, _ = rec.recommend(["user-3"], k=3)
    assert kept.shape == (1, 3)


def test_save_and_load_give_identical_recommendations(fitted, tmp_path):
    fitted_rec, walks = fitted
    # Serving through the ranker whatever validation chose, so that its path is covered too.
    rec = px.Recommender(
        fitted_rec.retriever,
        fitted_rec.ranker,
        fitted_rec.options,
        fitted_rec.item_ids,
        fitted_rec.histories,
        use_ranker=True,
        validation=fitted_rec.validation,
    )
    rec.save(tmp_path / "model")
    loaded = px.Recommender.load(tmp_path / "model")
    histories = [list(walks[u, :-1]) for u in range(5)]
    users = [f"user-{u}" for u in range(5)]
    for before, after in zip(
        rec.recommend(users, histories, k=7), loaded.recommend(users, histories, k=7), strict=True
    ):
        np.testing.assert_array_equal(before, after)
    assert loaded.options == rec.options and loaded.use_ranker
    with pytest.raises(ValueError, match="directory"):
        px.Recommender.load(tmp_path / "absent")
    (tmp_path / "model" / "recommender.json").write_text("{not json")
    with pytest.raises(ValueError, match="directory"):
        px.Recommender.load(tmp_path / "model")


@pytest.mark.parametrize(
    ("arguments", "name"),
    [
        ((["a", "b"], [1], [0.0, 1.0]), "item_ids"),
        ((["a", "b"], [1, 2], [0.0]), "timestamps"),
        ((["a", "a"], [1, 2], [0.0, math.nan]), "timestamps"),
        ((["a", "a"], [1, 2], ["monday", "tuesday"]), "timestamps"),
        (([], [], []), "user_ids"),
        ((["a", "a"], [1, 2], [0.0, 1.0], [5.0, None]), "ratings"),
        ((["a", "b"], [1, 2], [0.0, 1.0]), "user_ids"),  # nobody has a second interaction
    ],
)
def test_fit_rejects_bad_input_naming_the_argument(arguments, name):
    with library_checks_only(), pytest.raises(ValueError, match=name):
        px.Recommender.fit(*arguments, options=QUICK)


def test_recommend_rejects_bad_k_and_empty_histories(fitted):
    rec, _ = fitted
    for k in (0, NUM_ITEMS + 1):
        with pytest.raises(ValueError, match="k: expected"):
            rec.recommend(["user-1"], [["item-1"]], k=k)
    with pytest.raises(ValueError, match=r"histories\[1\]"):
        rec.recommend(["user-1", "user-2"], [["item-1"], []], k=3)
    with pytest.raises(ValueError, match="histories"):
        rec.recommend(["user-1", "user-2"], [["item-1"]], k=3)
    with pytest.raises(ValueError, match="user_ids"):
        rec.recommend(["stranger"], k=3)


def test_fit_options_reject_out_of_range_values():
    with pytest.raises(ValueError, match="history_seq_len"):
        px.FitOptions(history_seq_len=201)
    with pytest.raises(ValueError, match="action_weights"):
        px.FitOptions(action_weights=(("no_such_action", 1.0),))


def test_read_interactions_csv_by_column_name(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("who,what,when,stars\nann,m1,3,4\nbob,m2,1,5\n")
    users, items, times, ratings = px.read_interactions_csv(
        path, user="who", item="what", timestamp="when", rating="stars"
    )
    assert users == ["ann", "bob"] and items == ["m1", "m2"]
    np.testing.assert_array_equal(times, [3.0, 1.0])
    np.testing.assert_array_equal(ratings, [4.0, 5.0])
    with pytest.raises(ValueError, match="timestamp"):
        px.read_interactions_csv(path, user="who", item="what", timestamp="time")
    with pytest.raises(ValueError, match="timestamp"):
        px.read_interactions_csv(path, user="who", item="what", timestamp="who")
