"""The Pallas corpus top-k against an independent NumPy full sort (interpreter on CPU).

Inputs are small integers, so every score is exact in float32 and the comparison can demand
identical indices and scores, ties included.
"""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from phoenix_eqx.kernels import corpus_top_k

TILE_N = 64


def numpy_top_k(queries, corpus, k, corpus_mask):
    """Full sort: score descending, NaN after every number, ties to the lower index."""
    scores = queries.astype(np.float64) @ corpus.astype(np.float64).T
    num_items = corpus.shape[0]
    mask = np.ones(num_items, bool) if corpus_mask is None else corpus_mask
    out_scores = np.full((len(queries), k), -np.inf)
    out_indices = np.full((len(queries), k), -1)
    for row, row_scores in enumerate(scores):
        valid = np.flatnonzero(mask)
        is_nan = np.isnan(row_scores[valid])
        # lexsort sorts by the last key first: NaN flag, then -score, then index.
        order = valid[np.lexsort((valid, -np.nan_to_num(row_scores[valid], nan=0.0), is_nan))]
        order = order[:k]
        out_indices[row, : len(order)] = order
        out_scores[row, : len(order)] = row_scores[order]
    return out_scores, out_indices


def assert_matches(result, queries, corpus, k, corpus_mask):
    want_scores, want_indices = numpy_top_k(queries, corpus, k, corpus_mask)
    np.testing.assert_array_equal(np.asarray(result.indices), want_indices)
    np.testing.assert_array_equal(np.asarray(result.scores, np.float64), want_scores)


def run_pallas(queries, corpus, k, corpus_mask=None, tile_n=TILE_N):
    from phoenix_eqx.kernels.corpus_top_k.mosaic_gpu import corpus_top_k_pallas

    mask = None if corpus_mask is None else jnp.asarray(corpus_mask)
    return corpus_top_k_pallas(
        jnp.asarray(queries),
        jnp.asarray(corpus),
        k,
        corpus_mask=mask,
        tile_n=tile_n,
        interpret=True,
    )


@st.composite
def problems(draw, corpus_dtype):
    batch = draw(st.sampled_from([1, 3, 70]))
    dim = draw(st.sampled_from([64, 128, 192]))
    num_items = draw(st.integers(1, 5 * TILE_N + 7))
    k = draw(st.integers(1, num_items))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    # A narrow value range makes ties common.
    spread = draw(st.sampled_from([1, 3]))
    queries = rng.integers(-spread, spread + 1, (batch, dim)).astype(np.float32)
    corpus = rng.integers(-spread, spread + 1, (num_items, dim)).astype(np.float32)
    if draw(st.booleans()):  # non-finite entries: inf scores and NaN scores
        corpus[rng.integers(num_items, size=2), rng.integers(dim, size=2)] = [np.inf, -np.inf]
        if draw(st.booleans()):
            corpus[rng.integers(num_items), 0] = np.nan
    mask_kind = draw(st.sampled_from(["none", "random", "all", "few"]))
    mask = {
        "none": None,
        "random": rng.random(num_items) < 0.6,
        "all": np.zeros(num_items, bool),
        "few": np.isin(np.arange(num_items), rng.integers(num_items, size=3)),
    }[mask_kind]
    queries = queries.astype(draw(st.sampled_from([np.float32, ml_dtypes.bfloat16])))
    return queries, corpus.astype(corpus_dtype), k, mask


@given(problems(ml_dtypes.bfloat16))
def test_kernel_matches_full_sort(problem):
    queries, corpus, k, mask = problem
    assert_matches(run_pallas(queries, corpus, k, mask), queries, corpus, k, mask)


@given(problems(np.float32), st.sampled_from([16, 100]))
def test_float32_corpus_by_chunks_matches_full_sort(problem, chunk):
    from phoenix_eqx.kernels.corpus_top_k.merge import top_k_by_chunks

    queries, corpus, k, mask = problem
    mask = None if mask is None else jnp.asarray(mask)
    run = jax.jit(top_k_by_chunks, static_argnames=("k", "chunk"))
    result = run(jnp.asarray(queries), jnp.asarray(corpus), k=k, corpus_mask=mask, chunk=chunk)
    assert_matches(result, queries, corpus, k, None if mask is None else np.asarray(mask))


def test_float32_corpus_is_refused_by_pallas_and_taken_by_auto():
    rng = np.random.default_rng(5)
    corpus = jnp.asarray(rng.integers(-2, 3, (100, 64)), jnp.float32)
    queries = jnp.asarray(rng.integers(-2, 3, (3, 64)), jnp.float32)
    with pytest.raises(NotImplementedError, match="corpus: expected bfloat16"):
        corpus_top_k(queries, corpus, 9, implementation="pallas", interpret=True)
    result = corpus_top_k(queries, corpus, 9, implementation="auto")
    assert_matches(result, np.asarray(queries), np.asarray(corpus), 9, None)


def test_k_accepts_numpy_and_jax_integer_scalars():
    corpus = jnp.asarray(np.random.default_rng(6).standard_normal((50, 64)), jnp.float32)
    queries = corpus[:2]
    want = corpus_top_k(queries, corpus, 4)
    for k in (np.int64(4), jnp.int32(4)):
        got = corpus_top_k(queries, corpus, k)
        np.testing.assert_array_equal(np.asarray(got.indices), np.asarray(want.indices))
    # Runtime type checking (on in the suite) may refuse a non-integer first, with a TypeError.
    for bad in (4.0, True, "4"):
        with pytest.raises((ValueError, TypeError), match="k"):
            corpus_top_k(queries, corpus, bad)


@pytest.mark.parametrize("num_keys,k", [(40, 7), (6000, 5), (5000, 300), (999, 999)])
def test_stable_top_k_matches_stable_argsort(num_keys, k):
    from phoenix_eqx.kernels.corpus_top_k.merge import stable_top_k

    keys = np.random.default_rng(num_keys).integers(-4, 4, (3, num_keys)).astype(np.int32)
    keys[0] = 7  # one row of nothing but ties
    top_keys, positions = stable_top_k(jnp.asarray(keys), k)
    want = np.argsort(-keys, axis=1, kind="stable")[:, :k]
    np.testing.assert_array_equal(np.asarray(positions), want)
    np.testing.assert_array_equal(np.asarray(top_keys), np.take_along_axis(keys, want, axis=1))


def test_clustered_winners_open_tiles():
    """Every winner in one tile: the runner-up bound must send that tile to a full re-score."""
    rng = np.random.default_rng(1)
    corpus = rng.integers(-1, 2, (6 * TILE_N, 64)).astype(ml_dtypes.bfloat16)
    corpus[2 * TILE_N : 2 * TILE_N + 40] = 3
    queries = np.ones((2, 64), ml_dtypes.bfloat16)
    queries[1] = -1
    assert_matches(run_pallas(queries, corpus, 50), queries, corpus, 50, None)


def test_all_equal_scores_tie_to_lowest_index():
    corpus = np.ones((3 * TILE_N + 5, 64), ml_dtypes.bfloat16)
    queries = np.ones((1, 64), np.float32)
    result = run_pallas(queries, corpus, 70)
    np.testing.assert_array_equal(np.asarray(result.indices)[0], np.arange(70))


def test_nan_query_row_ranks_nan_last():
    rng = np.random.default_rng(2)
    corpus = rng.integers(-2, 3, (2 * TILE_N + 3, 64)).astype(ml_dtypes.bfloat16)
    queries = rng.integers(-2, 3, (2, 64)).astype(np.float32)
    queries[0, 5] = np.nan
    mask = rng.random(corpus.shape[0]) < 0.5
    assert_matches(run_pallas(queries, corpus, 20, mask), queries, corpus, 20, mask)


def test_public_entry_point_dispatches_to_kernel():
    rng = np.random.default_rng(3)
    corpus = jnp.asarray(rng.integers(-2, 3, (300, 64)), jnp.bfloat16)
    queries = jnp.asarray(rng.integers(-2, 3, (4, 64)), jnp.float32)
    result = corpus_top_k(queries, corpus, 7, implementation="pallas", interpret=True)
    assert_matches(result, np.asarray(queries), np.asarray(corpus), 7, None)


def test_rejects_bad_tile_width():
    with pytest.raises(ValueError, match="tile_n"):
        run_pallas(
            np.ones((1, 64), np.float32), np.ones((64, 64), ml_dtypes.bfloat16), 1, tile_n=12
        )


@pytest.mark.gpu
@pytest.mark.parametrize("batch,num_items,k", [(1, 1_000_003, 1000), (200, 300_000, 100)])
def test_gpu_kernel_matches_reference(batch, num_items, k):
    """On the GPU with real-valued data: same scores as the XLA reference up to rounding."""
    from phoenix_eqx.kernels.corpus_top_k.reference import corpus_top_k_reference

    rng = np.random.default_rng(4)
    queries = jnp.asarray(rng.standard_normal((batch, 128)), jnp.float32)
    corpus = jnp.asarray(rng.standard_normal((num_items, 128)), jnp.bfloat16)
    mask = jnp.asarray(rng.random(num_items) < 0.9)
    got = corpus_top_k(queries, corpus, k, corpus_mask=mask, implementation="pallas")
    want = corpus_top_k_reference(queries, corpus, k, mask)
    np.testing.assert_allclose(np.asarray(got.scores), np.asarray(want.scores), atol=1e-3)
    assert np.mean(np.asarray(got.indices) == np.asarray(want.indices)) > 0.99
    assert np.asarray(mask)[np.asarray(got.indices)].all()
