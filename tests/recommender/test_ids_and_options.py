"""Ids that stay ids, booleans that are booleans, and one rule for every `FitOptions` number:
each bad value is a ValueError naming the argument, before any compute."""

import math

import numpy as np
import pytest

import phoenix_eqx as px
from phoenix_eqx.recommender.index import ItemLookup, as_ids

from ..helpers import library_checks_only

NUM_USERS, NUM_ITEMS, LENGTH = 24, 12, 6


@pytest.fixture(scope="module")
def tuple_ids(tiny_options, walk_log):
    users, items, times = walk_log(NUM_USERS, NUM_ITEMS, LENGTH, lambda i: ("shelf", i))
    return px.Recommender.fit(users, items, times, options=tiny_options)


def test_tuple_ids_are_accepted_and_come_back_whole(tuple_ids):
    items, scores = tuple_ids.recommend([0, 1], k=3)
    assert items.shape == (2, 3) and items.dtype == object
    assert all(isinstance(item, tuple) and item[0] == "shelf" for item in items.ravel())
    assert np.isfinite(scores).all()


def test_ids_come_back_as_the_type_they_went_in():
    lookup = ItemLookup.of([True, False])
    got = lookup(np.array([[1, 2]]))
    assert got.dtype == object and got[0, 0] is True and got[0, 1] is False
    assert ItemLookup.of([3, 4])(np.array([[2, 1]])).dtype == np.int64
    assert ItemLookup.of([np.int64(3).item(), 4.5])(np.array([[2, 1]])).tolist() == [[4.5, 3]]
    assert ItemLookup.of(["a"])(np.array([[1, -1]])).tolist() == [["a", None]]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (["a", None], "user_ids: expected ids, got None at position 1"),
        ([1.0, math.nan], "user_ids: expected ids, got NaN at position 1"),
        (np.array([1.0, np.nan]), "user_ids: expected ids, got NaN at position 1"),
        ("ab", "user_ids: expected a 1-D sequence of ids, got str"),
        ([["a"], ["b"]], "user_ids: expected hashable ids"),
    ],
)
def test_ids_that_cannot_be_ids_are_rejected_by_name(values, message):
    with library_checks_only(), pytest.raises(ValueError, match=message.replace("[", r"\[")):
        as_ids(values, "user_ids")


def test_fit_rejects_nan_and_none_item_ids(tiny_options, walk_log):
    users, items, times = walk_log(NUM_USERS, NUM_ITEMS, LENGTH, lambda i: f"i{i}")
    for bad in (math.nan, None):
        broken = items.copy()
        broken[3] = bad
        with library_checks_only(), pytest.raises(ValueError, match="item_ids: expected ids"):
            px.Recommender.fit(users, broken, times, options=tiny_options)


@library_checks_only()
def test_a_bare_string_history_and_non_boolean_flags_are_rejected(tuple_ids):
    with pytest.raises(ValueError, match="histories: expected 1 sequences"):
        tuple_ids.recommend([0], "i1", k=2)
    for flag in ("no", 1, None.__class__):
        with pytest.raises(ValueError, match="use_ranker: expected True or False"):
            tuple_ids.recommend([0], k=2, use_ranker=flag)
    with pytest.raises(ValueError, match="exclude_seen: expected True or False"):
        tuple_ids.score_items([0], exclude_seen="yes")


def test_a_user_who_has_seen_every_item_scores_minus_inf_without_nan(tuple_ids, recwarn):
    everything = [tuple_ids.item_ids]
    for use_ranker in (False, True):
        scores = tuple_ids.score_items([0], everything, use_ranker=use_ranker)
        assert np.isneginf(scores).all(), use_ranker
    assert not [w for w in recwarn if "All-NaN" in str(w.message)]
    items, scores = tuple_ids.recommend([0], everything, k=2, use_ranker=True)
    assert items.tolist() == [[None, None]] and np.isneginf(scores).all()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("emb_size", True, "emb_size: expected an int, got True"),
        ("history_seq_len", 8.5, "history_seq_len: expected an int, got 8.5"),
        ("batch_size", "16", "batch_size: expected an int, got '16'"),
        ("seed", 1.5, "seed: expected an int, got 1.5"),
        ("seed", -1, "seed: expected an int in 0..4294967295, got -1"),
        ("seed", 2**64, "seed: expected an int in 0..4294967295"),
        ("learning_rate", math.inf, "learning_rate: expected a finite number"),
        ("learning_rate", math.nan, "learning_rate: expected a finite number"),
        ("ranker_learning_rate", 0.0, "ranker_learning_rate: expected a finite number in \\(0"),
        ("weight_decay", -0.1, "weight_decay: expected a finite number in \\[0"),
        ("validation_users", 0, "validation_users: expected an int >= 1, got 0"),
        ("table_init_std", math.inf, "table_init_std: expected a finite number"),
        ("learning_rate", "fast", "learning_rate: expected a number, got 'fast'"),
        ("time_budget_s", -5.0, "time_budget_s: expected a finite number"),
        ("retrieval_share", True, "retrieval_share: expected a number, got True"),
        ("ranker_warm_start", "no", "ranker_warm_start: expected True or False"),
        ("verbose", 1, "verbose: expected True or False"),
        ("loss", "huber", "loss: expected one of"),
        ("action_weights", (("click_score", math.nan),), "action_weights: expected a finite"),
        ("action_weights", (("click_score", "high"),), "action_weights: expected a number"),
        ("action_weights", {"click_score": 1.0}, "action_weights: expected a tuple of"),
        ("action_weights", (("click_score", 1.0, 2.0),), "action_weights: expected \\(action"),
        ("cooccurrence_weights", (0.0, -1.0), "cooccurrence_weights: expected a non-empty"),
        ("cooccurrence_weights", (), "cooccurrence_weights: expected a non-empty"),
        ("cooccurrence_window", -1, "cooccurrence_window: expected an int >= 0"),
    ],
)
def test_every_option_has_one_rule_and_names_its_field(field, value, message):
    with library_checks_only(), pytest.raises(ValueError, match=message):
        px.FitOptions(**{field: value})


@library_checks_only()
def test_numpy_numbers_are_accepted_and_stored_as_python_numbers():
    """Without the suite's runtime type checker, as users run: the options' own checks."""
    options = px.FitOptions(
        emb_size=np.int64(16),
        seed=np.uint32(7),
        learning_rate=np.float32(0.5),
        action_weights=[("click_score", np.float64(1.0))],
    )
    assert type(options.emb_size) is int and type(options.seed) is int
    assert type(options.learning_rate) is float
    assert options.action_weights == (("click_score", 1.0),)
    assert options == px.FitOptions(
        emb_size=16, seed=7, learning_rate=0.5, action_weights=(("click_score", 1.0),)
    )
