"""Prefix caching: chunked scoring equals one-shot scoring, in bounded memory."""

import dataclasses
import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import phoenix_eqx as px
from phoenix_eqx import serving
from phoenix_eqx.inference import rank

from ..helpers import example_inputs, tiny_ranker_config

CANDIDATES = 7
TOLERANCE = 1e-5


@functools.cache
def model_and_inputs(positions: str, history: str, dtype=jnp.float32):
    config = tiny_ranker_config(candidate_positions=positions, history_attention=history)
    config = dataclasses.replace(config, fprop_dtype=dtype)
    model = px.PhoenixModel(config, key=jax.random.key(0))
    batch, embeddings = example_inputs(config, batch_size=3, candidates=CANDIDATES)
    # One invalid candidate, to check padding stays out of every chunk's attention.
    batch = dataclasses.replace(
        batch, candidate_post_hashes=batch.candidate_post_hashes.at[1, 2].set(0)
    )
    return model, batch, embeddings, rank(model, batch, embeddings)


# The seed's options and X's production ones (history mode and positions change only how the
# prefix is encoded and where candidates sit; both are covered by these two).
VARIANTS = [("sequential", "causal"), ("shared", "bidirectional")]


@given(variant=st.sampled_from(VARIANTS), chunk=st.integers(1, CANDIDATES + 2))
def test_chunked_scores_equal_one_shot_scores(variant, chunk):
    model, batch, embeddings, expected = model_and_inputs(*variant)
    output = rank(model, batch, embeddings, candidate_chunk=chunk)
    np.testing.assert_allclose(output.logits, expected.logits, atol=TOLERANCE)
    np.testing.assert_allclose(output.probabilities, expected.probabilities, atol=TOLERANCE)
    valid = np.asarray(batch.candidate_valid)
    assert np.array_equal(output.candidate_valid, valid)
    assert np.array_equal(output.ranked_indices, expected.ranked_indices)


def test_chunked_scores_equal_one_shot_in_bfloat16():
    model, batch, embeddings, expected = model_and_inputs("sequential", "causal", jnp.bfloat16)
    output = rank(model, batch, embeddings, candidate_chunk=3)  # the inference entry point
    valid = np.asarray(batch.candidate_valid)
    np.testing.assert_allclose(
        np.asarray(output.probabilities)[valid],
        np.asarray(expected.probabilities)[valid],
        atol=2e-2,
    )


def _candidates(batch, embeddings, slots):
    """The batch's candidates at `slots`, in that order."""
    slots = jnp.asarray(slots, jnp.int32)
    batch = dataclasses.replace(
        batch, **{f: getattr(batch, f)[:, slots] for f in serving.CANDIDATE_FIELDS}
    )
    embeddings = dataclasses.replace(
        embeddings, **{f: getattr(embeddings, f)[:, slots] for f in serving.CANDIDATE_EMBEDDINGS}
    )
    return batch, embeddings


@given(order=st.permutations(range(CANDIDATES)), split=st.integers(1, CANDIDATES - 1))
def test_shared_positions_score_chunks_in_any_order(order, split):
    model, batch, embeddings, expected = model_and_inputs("shared", "bidirectional")
    cache = serving.encode_prefix(model, batch, embeddings)
    score = eqx.filter_jit(serving.score_candidates)
    for part, offset in ((order[:split], 5), (order[split:], 0)):
        logits = score(model, cache, *_candidates(batch, embeddings, part), offset=offset)
        np.testing.assert_allclose(logits, expected.logits[:, jnp.asarray(part)], atol=TOLERANCE)


def test_sequential_positions_keep_each_chunks_original_positions():
    model, batch, embeddings, expected = model_and_inputs("sequential", "causal")
    cache = serving.encode_prefix(model, batch, embeddings)
    slots = [3, 4, 5]
    chunk = _candidates(batch, embeddings, slots)
    right = serving.score_candidates(model, cache, *chunk, offset=3)
    np.testing.assert_allclose(right, expected.logits[:, 3:6], atol=TOLERANCE)
    wrong = serving.score_candidates(model, cache, *chunk, offset=0)
    assert np.max(np.abs(np.asarray(wrong) - np.asarray(expected.logits[:, 3:6]))) > 1e-3


def _temp_bytes(model, num_candidates: int, chunk: int) -> int:
    batch, embeddings = example_inputs(model.config, batch_size=1, candidates=num_candidates)

    def logits(batch, embeddings):
        cache = serving.encode_prefix(model, batch, embeddings)
        return serving.candidate_logits_chunked(
            model, cache, batch, embeddings, candidate_chunk=chunk
        )

    compiled = jax.jit(logits).lower(batch, embeddings).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_memory_does_not_grow_with_the_candidate_count():
    model, *_ = model_and_inputs("shared", "bidirectional")
    small, large = (_temp_bytes(model, count, chunk=64) for count in (128, 1024))
    # Working memory is the chunk's: the same for 8x the candidates (the result buffer and
    # the inputs are arguments and outputs, not temporaries).
    assert large <= small * 1.05
    # Scoring all 1024 candidates as one chunk needs far more.
    assert _temp_bytes(model, 1024, chunk=1024) > 4 * large


def test_ten_thousand_candidates_for_one_user():
    model, *_ = model_and_inputs("shared", "bidirectional")
    batch, _ = example_inputs(model.config, batch_size=1, candidates=10_000, seed=1)
    embeddings = px.HashEmbeddingTables(50, 50, 50, model.config.emb_size, key=jax.random.key(3))(
        batch
    )
    output = rank(model, batch, embeddings, candidate_chunk=1024)
    assert output.logits.shape == (1, 10_000, model.config.num_actions)
    assert np.all(np.isfinite(output.logits))
    assert sorted(np.asarray(output.ranked_indices[0]).tolist()) == list(range(10_000))
    # A sample of them, ranked one-shot, gets the same scores (shared positions: slots do not
    # matter).
    sample = [0, 1, 4_321, 9_998, 9_999]
    expected = rank(model, *_candidates(batch, embeddings, sample))
    np.testing.assert_allclose(
        output.logits[:, jnp.asarray(sample)], expected.logits, atol=TOLERANCE
    )


def test_arguments_are_checked():
    model, batch, embeddings, _ = model_and_inputs("sequential", "causal")
    with pytest.raises(ValueError, match="candidate_chunk: expected 1 <= candidate_chunk, got 0"):
        rank(model, batch, embeddings, candidate_chunk=0)
    # Runtime type checking (on in the suite) may refuse a float first, with a TypeError.
    with pytest.raises((ValueError, TypeError), match="candidate_chunk"):
        rank(model, batch, embeddings, candidate_chunk=2.5)
    chunked = rank(model, batch, embeddings, candidate_chunk=np.int64(3))
    np.testing.assert_array_equal(
        chunked.logits, rank(model, batch, embeddings, candidate_chunk=3).logits
    )
    cache = serving.encode_prefix(model, batch, embeddings)
    one_user = [jax.tree.map(lambda x: x[:1], tree) for tree in (batch, embeddings)]
    with pytest.raises(
        ValueError, match=r"cache: expected \(layers, batch, prefix\) = \(2, 1, 7\)"
    ):
        serving.score_candidates(model, cache, *one_user)
    with pytest.raises(ValueError, match="offset: expected 0 <= offset, got -1"):
        serving.score_candidates(model, cache, batch, embeddings, offset=-1)


def test_prefix_cache_needs_no_candidates():
    model, batch, embeddings, expected = model_and_inputs("sequential", "causal")
    no_candidates = _candidates(batch, embeddings, [])
    cache = serving.encode_prefix(model, *no_candidates)
    logits = serving.score_candidates(model, cache, batch, embeddings)
    np.testing.assert_allclose(logits, expected.logits, atol=TOLERANCE)


@given(
    positions=st.sampled_from(["sequential", "shared"]),
    rows=st.lists(st.integers(0, 2), min_size=4, max_size=4),  # one shape: one compilation
    data=st.data(),
)
def test_a_cut_prefix_scores_as_the_shorter_prefix_encoded_alone(positions, rows, data):
    model, batch, embeddings, _ = model_and_inputs(positions, "causal")
    num_prefix = batch.history_post_hashes.shape[1] + 1
    lengths = data.draw(
        st.lists(st.integers(1, num_prefix), min_size=len(rows), max_size=len(rows))
    )
    rows, lengths = jnp.array(rows), jnp.array(lengths)
    cut_batch, cut_embeddings = jax.tree.map(lambda x: x[rows], (batch, embeddings))
    cache = model.encode_prefix(batch, embeddings)
    got = model.score_candidates_at_cuts(cache, rows, lengths, cut_batch, cut_embeddings)
    # The shorter prefixes on their own: history from item `length - 1` on is padding.
    keep = jnp.arange(num_prefix - 1) < (lengths - 1)[:, None]
    shorter = dataclasses.replace(
        cut_batch,
        history_post_hashes=jnp.where(keep[..., None], cut_batch.history_post_hashes, 0),
    )
    alone = model.score_candidates(
        model.encode_prefix(shorter, cut_embeddings), shorter, cut_embeddings
    )
    valid = np.asarray(cut_batch.candidate_valid)
    np.testing.assert_allclose(np.asarray(got)[valid], np.asarray(alone)[valid], atol=TOLERANCE)


def test_cutting_a_bidirectional_prefix_is_refused():
    model, batch, embeddings, _ = model_and_inputs("shared", "bidirectional")
    cache = model.encode_prefix(batch, embeddings)
    rows = jnp.array([0])
    one, one_embeddings = jax.tree.map(lambda x: x[rows], (batch, embeddings))
    with pytest.raises(ValueError, match="history_attention"):
        model.score_candidates_at_cuts(cache, rows, jnp.array([2]), one, one_embeddings)


def test_cut_indices_and_lengths_are_checked():
    model, batch, embeddings, _ = model_and_inputs("shared", "causal")
    cache = model.encode_prefix(batch, embeddings)
    num_prefix = batch.history_post_hashes.shape[1] + 1
    one, one_embeddings = jax.tree.map(lambda x: x[:1], (batch, embeddings))
    for rows, lengths, name in (
        ([3], [2], "rows"),  # the cache holds 3 prefixes
        ([-1], [2], "rows"),
        ([0], [0], "lengths"),
        ([0], [num_prefix + 1], "lengths"),
    ):
        with pytest.raises(Exception, match=name):
            model.score_candidates_at_cuts(
                cache, jnp.array(rows), jnp.array(lengths), one, one_embeddings
            )
