"""`Recommender`: fit on a planted-pattern log, recommend, bad inputs, save/load round trip,
side features, the interaction readers."""

import dataclasses
import math
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import phoenix_eqx as px

from ..helpers import library_checks_only

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
    ranker_learning_rate=2e-2,
    # A few dozen steps: unit-scale item rows stand out from the history tokens' constant
    # action and surface parts from the start (the small default suits thousands of steps).
    table_init_std=1.0,
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


def _side_features():
    """Items: their block of four consecutive items (every item) and a parity (the first 100
    items only). Users: a cohort for the even users only."""
    blocks = {f"item-{i}": f"block-{i // 4}" for i in range(NUM_ITEMS)}
    parity = {f"item-{i}": i % 2 for i in range(100)}
    cohorts = {f"user-{u}": u % 3 for u in range(0, NUM_USERS, 2)}
    return {"block": blocks, "parity": parity}, {"cohort": cohorts}


@pytest.fixture(scope="module")
def fitted_with_features():
    users, items, times, walks = _planted_log()
    item_features, user_features = _side_features()
    rec = px.Recommender.fit(
        users,
        items,
        times,
        item_features=item_features,
        user_features=user_features,
        options=dataclasses.replace(QUICK, epochs=6, ranker_positions_per_user=3),
    )
    return rec, walks


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
    assert set(rec.validation) <= {"retrieval", "ranker", "cooccurrence", "ranker_gain"}
    if "ranker" in rec.validation:
        # The paired gain is over the same users as the two stages' own figures, as served
        # (with the co-occurrence prior, when validation chose one).
        gain, validation = rec.validation["ranker_gain"], rec.validation
        difference = validation["cooccurrence"]["hr@10"] - validation["retrieval"]["hr@10"]
        assert gain["hr@10"] == pytest.approx(difference, abs=1e-9)
        assert 0 <= gain["hr@10_se"] <= 1
        (recall,) = (value for key, value in gain.items() if key.startswith("retrieval_recall@"))
        assert recall >= validation["retrieval"]["hr@10"]
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
    with pytest.raises(ValueError, match="learning_rate_decay_share"):
        px.FitOptions(learning_rate_decay_share=1.5)


@pytest.mark.parametrize("share", [0.0, 0.3, 1.0])
def test_learning_rate_holds_then_decays_to_zero_and_never_rises(share):
    options = px.FitOptions(learning_rate=3e-3, learning_rate_decay_share=share)
    progress = np.linspace(0.0, 1.2, 25)  # past 1: a last step after the deadline
    rates = np.array([float(options.schedule().rate(p)) for p in progress])
    assert np.all(np.diff(rates) <= 1e-12) and np.all(rates >= 0)
    held = progress <= 1.0 - share
    np.testing.assert_allclose(rates[held], 3e-3, rtol=1e-6)
    if share:
        np.testing.assert_allclose(rates[progress >= 1.0], 0.0, atol=1e-12)
        halfway = float(options.schedule().rate(1.0 - share / 2))
        np.testing.assert_allclose(halfway, 1.5e-3, rtol=1e-5)


def test_the_rate_set_in_the_optimizer_state_is_the_rate_adam_steps_with():
    options = px.FitOptions(learning_rate_decay_share=1.0)
    optimizer = options.schedule().optimizer()
    state = optimizer.init({"w": jnp.zeros(3)})
    state = optax.tree.set(state, learning_rate=options.schedule().rate(0.5))
    grads = {"w": jnp.ones(3)}
    updates, _ = optimizer.update(grads, state, {"w": jnp.zeros(3)})
    # Adam's first update is -rate * sign(gradient) (clipping keeps the direction).
    np.testing.assert_allclose(updates["w"], -1e-3, rtol=1e-3)


def test_weight_decay_shrinks_matrices_by_the_rate_set_in_the_state_and_nothing_else():
    options = px.FitOptions(learning_rate=0.1, weight_decay=0.5)
    optimizer = options.schedule().optimizer()
    params = {"matrix": jnp.full((2, 3), 2.0), "bias": jnp.ones(3), "temperature": jnp.ones(())}
    state = optimizer.init(params)
    state = optax.tree.set(state, learning_rate=options.schedule().rate(0.0) / 2)
    zero_gradients = jax.tree.map(jnp.zeros_like, params)
    updates, _ = optimizer.update(zero_gradients, state, params)
    # No gradient: a matrix moves by -rate * weight_decay * itself, the rest not at all.
    np.testing.assert_allclose(updates["matrix"], -0.05 * 0.5 * 2.0, rtol=1e-6)
    np.testing.assert_array_equal(updates["bias"], 0.0)
    np.testing.assert_array_equal(updates["temperature"], 0.0)


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


def test_side_features_become_extra_hashes_and_the_pattern_is_still_learned(fitted_with_features):
    rec, walks = fitted_with_features
    features = rec.features
    assert features.item_columns == ("block", "parity") and features.user_columns == ("cohort",)
    hash_config = rec.retriever.config.hash_config
    assert (hash_config.num_item_hashes, hash_config.num_user_hashes) == (3, 2)
    assert rec.ranker.config.hash_config == hash_config
    # Item rows first, then the 30 blocks, then the 2 parities; padding where a value is absent.
    hashes = features.item_hashes
    np.testing.assert_array_equal(hashes[0], [0, 0, 0])
    np.testing.assert_array_equal(hashes[1:, 0], np.arange(1, NUM_ITEMS + 1))
    blocks = {rec.item_ids[row - 1]: hashes[row, 1] for row in range(1, NUM_ITEMS + 1)}
    assert blocks["item-0"] == blocks["item-3"] != blocks["item-4"]
    assert set(hashes[1:, 1]) == set(range(NUM_ITEMS + 1, NUM_ITEMS + 31))
    parities = {rec.item_ids[row - 1]: hashes[row, 2] for row in range(1, NUM_ITEMS + 1)}
    assert parities["item-100"] == 0 and parities["item-0"] != parities["item-1"]
    assert {parities["item-0"], parities["item-1"]} == {NUM_ITEMS + 31, NUM_ITEMS + 32}
    assert features.num_post_rows == rec.retriever.tables.post_table.shape[0] == NUM_ITEMS + 33
    # Users: the shared row, then the cohort's three rows (padding for the odd users).
    np.testing.assert_array_equal(
        features.user_rows(["user-0", "user-1", "user-2", "stranger"]),
        [[1, 2], [1, 0], [1, 3], [1, 0]],
    )
    assert features.num_user_rows == rec.retriever.tables.user_table.shape[0] == 5

    user_ids = [f"user-{u}" for u in range(NUM_USERS)]
    top, scores = rec.recommend(user_ids, list(walks[:, :-1]), k=10)
    assert top.shape == scores.shape == (NUM_USERS, 10)
    recall = np.mean([walks[u, -1] in top[u] for u in range(NUM_USERS)])
    chance = 10 / (NUM_ITEMS - LOG_LENGTH)
    assert recall >= 5 * chance, (recall, chance)


def test_only_known_users_bring_their_user_features(fitted_with_features):
    rec, walks = fitted_with_features
    history = [list(walks[0, :-1])]
    # user-1 has no cohort: served exactly like a user unknown to fit.
    no_cohort = rec.score_items(["user-1"], history)
    np.testing.assert_array_equal(no_cohort, rec.score_items(["stranger"], history))
    assert not np.array_equal(rec.score_items(["user-0"], history), no_cohort)


@pytest.mark.parametrize(
    ("item_features", "user_features", "message"),
    [
        ([("block", {})], None, r"item_features: expected a mapping"),
        (None, {"cohort": [1, 2]}, r"user_features\['cohort'\]: expected a mapping"),
        ({"block": {}}, None, r"item_features\['block'\]: expected at least one value"),
        ({"block": {"item-1": ["a", "b"]}}, None, r"item_features\['block'\]: expected hashable"),
        (None, {"cohort": {"item-1": 1}}, r"user_features\['cohort'\]: expected ids from"),
        ({3: {"item-1": 1}}, None, r"item_features: expected str column names"),
    ],
)
def test_fit_rejects_bad_side_features_before_training(item_features, user_features, message):
    users, items, times, _ = _planted_log()
    with library_checks_only(), pytest.raises(ValueError, match=message):
        px.Recommender.fit(
            users,
            items,
            times,
            item_features=item_features,
            user_features=user_features,
            options=QUICK,
        )


def test_save_and_load_keep_the_side_features(fitted_with_features, tmp_path):
    rec, walks = fitted_with_features
    rec.save(tmp_path / "model")
    loaded = px.Recommender.load(tmp_path / "model")
    assert loaded.features.item_columns == rec.features.item_columns
    assert loaded.features.user_columns == rec.features.user_columns
    np.testing.assert_array_equal(loaded.features.item_hashes, rec.features.item_hashes)
    # Known users with and without a cohort (their logs from fit), and a stranger.
    users = ["user-0", "user-1", "user-2"]
    for before, after in zip(rec.recommend(users, k=7), loaded.recommend(users, k=7), strict=True):
        np.testing.assert_array_equal(before, after)
    history = [list(walks[3, :-1])]
    np.testing.assert_array_equal(
        rec.score_items(["stranger"], history), loaded.score_items(["stranger"], history)
    )


def _write_log(tmp_path):
    """The same log as CSV and as Parquet."""
    pyarrow = pytest.importorskip("pyarrow")
    parquet = pytest.importorskip("pyarrow.parquet")
    columns = {"who": ["ann", "bob", "ann"], "what": ["m1", "m2", "m3"], "when": [3, 1, 7]}
    columns["stars"] = [4.0, 5.0, 2.5]
    csv_path, parquet_path = tmp_path / "log.csv", tmp_path / "log.parquet"
    rows = zip(*columns.values(), strict=True)
    csv_path.write_text(
        "who,what,when,stars\n" + "".join(",".join(map(str, r)) + "\n" for r in rows)
    )
    parquet.write_table(pyarrow.table(columns), parquet_path)
    return csv_path, parquet_path


def test_read_interactions_parquet_matches_the_csv_reader(tmp_path, monkeypatch):
    csv_path, parquet_path = _write_log(tmp_path)
    names = dict(user="who", item="what", timestamp="when")
    for rating in (None, "stars"):
        from_csv = px.read_interactions_csv(csv_path, **names, rating=rating)
        from_parquet = px.read_interactions_parquet(parquet_path, **names, rating=rating)
        assert from_parquet[:2] == from_csv[:2] == (["ann", "bob", "ann"], ["m1", "m2", "m3"])
        np.testing.assert_array_equal(from_parquet[2], from_csv[2])
        if rating is None:
            assert from_parquet[3] is None and from_csv[3] is None
        else:
            np.testing.assert_array_equal(from_parquet[3], from_csv[3])
    with pytest.raises(ValueError, match="rating: expected a column"):
        px.read_interactions_parquet(parquet_path, **names, rating="score")
    with pytest.raises(ValueError, match="timestamp: expected numbers"):
        px.read_interactions_parquet(parquet_path, user="who", item="what", timestamp="who")
    with pytest.raises(ValueError, match="path: cannot read"):
        px.read_interactions_parquet(csv_path, **names)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ImportError, match=r"phoenix-eqx\[parquet\]"):
        px.read_interactions_parquet(parquet_path, **names)
