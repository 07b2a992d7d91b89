"""Serving's top-k is exact: `two_stage.top_k_unseen` equals a full stable sort (ties to the
lower index, exclusions and padding never returned, -1 / -inf past the finite scores), and
`Recommender.recommend` equals the head of a full sort of `score_items`' row."""

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import phoenix_eqx as px
from phoenix_eqx.data.synthetic import planted_walks
from phoenix_eqx.recommender.corpus_search import top_k_unseen
from phoenix_eqx.recommender.two_stage import chunk_size

from ..helpers import full_sort_top_k

# Few distinct values, so that ties, signed zeros, NaN and -inf all occur.
VALUES = (-1.5, -0.0, 0.0, 0.25, 0.25, 2.0, np.nan, -np.inf, np.inf)


@given(
    data=st.data(),
    batch=st.integers(1, 3),
    num_rows=st.integers(2, 40),
    width=st.integers(0, 6),
)
def test_top_k_unseen_equals_a_full_stable_sort(data, batch, num_rows, width):
    scores = np.array(
        data.draw(
            st.lists(st.sampled_from(VALUES), min_size=batch * num_rows, max_size=batch * num_rows)
        ),
        np.float32,
    ).reshape(batch, num_rows)
    exclude = np.array(
        data.draw(
            st.lists(st.integers(0, num_rows - 1), min_size=batch * width, max_size=batch * width)
        ),
        np.int32,
    ).reshape(batch, width)
    k = data.draw(st.integers(1, num_rows + 2))
    indices, values = top_k_unseen(jnp.asarray(scores), jnp.asarray(exclude), k)
    expected_indices, expected_values = full_sort_top_k(scores, exclude, k)
    np.testing.assert_array_equal(np.asarray(indices), expected_indices)
    np.testing.assert_array_equal(np.asarray(values), expected_values)


def test_top_k_unseen_is_exact_on_a_long_row_with_many_ties():
    """A row as long as a real corpus, where XLA's CPU top-k takes another path than on a
    short one: still ties to the lower index, exclusions never returned."""
    rng = np.random.default_rng(0)
    scores = rng.choice(np.array([0.5, 1.0, 1.5, -0.0, 0.0], np.float32), size=(2, 300_001))
    exclude = rng.integers(0, 300_001, size=(2, 64)).astype(np.int32)
    indices, values = top_k_unseen(jnp.asarray(scores), jnp.asarray(exclude), 200)
    expected_indices, expected_values = full_sort_top_k(scores[:, :2000], exclude, 200)
    np.testing.assert_array_equal(np.asarray(indices), expected_indices)
    np.testing.assert_array_equal(np.asarray(values), expected_values)


def test_chunks_are_powers_of_two_down_to_one_user_and_shrink_with_a_corpus_scored_whole():
    assert chunk_size(1, 1_000_001, 200) == 1
    assert chunk_size(3, 101, 10) == 4
    assert chunk_size(1000, 101, 10) == 256
    # Searched by blocks: no score row is held, full chunks.
    assert chunk_size(1000, 1_000_001, 200) == 256
    # Too small for blocks to pay at this k: scored whole, 32 MiB of scores per call.
    assert chunk_size(1000, 50_001, 200) == 128


@pytest.fixture(scope="module")
def small_fit():
    users, items, timestamps = planted_walks(60, 50, 900, seed=3)
    options = px.FitOptions(
        emb_size=16,
        num_layers=1,
        history_seq_len=8,
        epochs=1,
        ranker_epochs=0,
        num_retrieved=30,
        verbose=False,
    )
    return px.Recommender.fit(users, items, timestamps, options=options)


def test_recommend_equals_the_head_of_a_full_sort_of_score_items(small_fit):
    users = list(small_fit.histories)[:9]
    ids, scores = small_fit.recommend(users, k=30)
    full = small_fit.score_items(users)
    order = np.argsort(-full, axis=1, kind="stable")[:, :30]
    item_ids = np.array(small_fit.item_ids)
    np.testing.assert_array_equal(ids, item_ids[order])
    np.testing.assert_array_equal(scores, np.take_along_axis(full, order, axis=1))


def test_recommend_pads_with_none_when_fewer_items_remain(small_fit):
    items = list(small_fit.item_ids)
    ids, scores = small_fit.recommend([0], histories=[items[3:]], k=5)
    full = small_fit.score_items([0], histories=[items[3:]])
    expected = np.argsort(-full[0], kind="stable")[:3]
    assert list(ids[0, :3]) == [items[i] for i in expected]
    assert list(ids[0, 3:]) == [None, None]
    np.testing.assert_array_equal(scores[0, 3:], [-np.inf, -np.inf])
    np.testing.assert_array_equal(scores[0, :3], full[0, expected])
