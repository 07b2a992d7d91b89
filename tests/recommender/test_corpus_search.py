"""The corpus search is exact on every path: a score never depends on what is computed beside
it, and the block search returns what a full stable sort of those scores returns, whether its
certificate holds (the fast path) or the batch falls back to scoring the corpus whole."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from phoenix_eqx.recommender.corpus_search import (
    _blocked_top_unseen,
    dot_scores,
    top_unseen,
    uses_blocks,
)

from ..helpers import full_sort_top_k

# Serving's exactness rests on one score for one (user, item) in every compiled program, as
# XLA's default CPU code generation gives; at its lowest optimisation it does not.
pytestmark = pytest.mark.default_codegen


def unit_rows(rng: np.random.Generator, rows: int, dims: int) -> np.ndarray:
    vectors = rng.standard_normal((rows, dims)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@given(
    seed=st.integers(0, 2**16),
    batch=st.integers(1, 5),
    rows=st.integers(1, 300),
    dims=st.sampled_from([1, 3, 16]),
)
def test_a_score_does_not_depend_on_what_is_scored_beside_it(seed, batch, rows, dims):
    rng = np.random.default_rng(seed)
    users = jnp.asarray(rng.standard_normal((batch, dims)).astype(np.float32) * 3)
    items = jnp.asarray(rng.standard_normal((rows, dims)).astype(np.float32) * 3)
    picked = rng.integers(0, rows, size=(batch, 7))
    whole = np.asarray(jax.jit(dot_scores)(users, items))
    one_user = np.asarray(jax.jit(dot_scores)(users[-1:], items))
    gathered = np.asarray(jax.jit(dot_scores)(users, items[picked]))
    np.testing.assert_array_equal(one_user[0], whole[-1])
    np.testing.assert_array_equal(gathered, np.take_along_axis(whole, picked, axis=1))


@given(
    seed=st.integers(0, 2**16),
    corpus=st.sampled_from(["random", "few distinct", "non-finite rows"]),
    rows=st.integers(2400, 5000),
    k=st.integers(1, 4),
    width=st.integers(0, 40),
    runs=st.booleans(),
)
def test_block_search_equals_a_full_sort(seed, corpus, rows, k, width, runs):
    rng = np.random.default_rng(seed)
    assert uses_blocks(rows, k)
    items = unit_rows(rng, rows, 8)
    if corpus == "few distinct":  # ties everywhere, also across the chosen blocks' boundary
        items = unit_rows(rng, 3, 8)[rng.integers(0, 3, rows)]
    elif corpus == "non-finite rows":
        items[rng.integers(0, rows, 5)] = rng.choice([np.nan, np.inf, -np.inf], (5, 8))
    users = unit_rows(rng, 3, 8)
    exclude = rng.integers(0, rows, (3, width)).astype(np.int32)
    if runs:  # whole blocks excluded, repeats, the padding row among them
        exclude = (rng.integers(0, rows - width, (3, 1)) + np.arange(width)) // 2
    exclude = exclude.astype(np.int32)
    search = jax.jit(top_unseen, static_argnums=3)
    indices, values = search(jnp.asarray(users), jnp.asarray(items), jnp.asarray(exclude), k)
    scores = np.asarray(jax.jit(dot_scores)(jnp.asarray(users), jnp.asarray(items)))
    expected_indices, expected_values = full_sort_top_k(scores, exclude, k)
    np.testing.assert_array_equal(np.asarray(indices), expected_indices)
    np.testing.assert_array_equal(np.asarray(values), expected_values)


@pytest.mark.parametrize(("corpus", "certified"), [("random", True), ("one vector", False)])
def test_random_corpora_take_the_fast_path_and_ties_at_the_boundary_fall_back(corpus, certified):
    rng = np.random.default_rng(0)
    items = unit_rows(rng, 20_000, 16)
    if corpus == "one vector":
        items[:] = items[0]
    users, exclude = unit_rows(rng, 4, 16), rng.integers(0, 20_000, (4, 6)).astype(np.int32)
    arguments = (jnp.asarray(users), jnp.asarray(items), jnp.asarray(exclude), 50)
    assert bool(jax.jit(_blocked_top_unseen, static_argnums=3)(*arguments).certified) == certified
    indices, values = jax.jit(top_unseen, static_argnums=3)(*arguments)
    scores = np.asarray(jax.jit(dot_scores)(jnp.asarray(users), jnp.asarray(items)))
    expected_indices, expected_values = full_sort_top_k(scores, exclude, 50)
    np.testing.assert_array_equal(np.asarray(indices), expected_indices)
    np.testing.assert_array_equal(np.asarray(values), expected_values)
