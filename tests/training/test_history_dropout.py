"""History dropout in retrieval training (`FitOptions.dropout`): it drops what it says, keeps
each token's expected embedding, touches nothing else, and is off wherever it is 0."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import phoenix_eqx as px
from phoenix_eqx.training import SequenceExample, TrainableRetriever, all_positions_objective
from phoenix_eqx.training.sequential import drop_history

from ..helpers import example_inputs, library_checks_only, tiny_retrieval_config


def _embeddings(seed: int = 0) -> px.RecsysEmbeddings:
    keys = jax.random.split(jax.random.key(seed), 5)
    shapes = {
        "user_embeddings": (3, 2, 8),
        "history_post_embeddings": (3, 6, 2, 8),
        "candidate_post_embeddings": (3, 4, 2, 8),
        "history_author_embeddings": (3, 6, 2, 8),
        "candidate_author_embeddings": (3, 4, 2, 8),
    }
    return px.RecsysEmbeddings(
        **{
            name: jax.random.normal(key, shape) + 3.0  # never 0: a zero is a dropped entry
            for (name, shape), key in zip(shapes.items(), keys, strict=True)
        }
    )


@given(rate=st.floats(0.05, 0.9), seed=st.integers(0, 2**31 - 1))
def test_dropped_entries_are_zero_the_kept_scaled_and_the_rest_untouched(rate, seed):
    embeddings = _embeddings()
    dropped = drop_history(embeddings, rate, jax.random.key(seed))
    for name in ("history_post_embeddings", "history_author_embeddings"):
        before, after = np.asarray(getattr(embeddings, name)), np.asarray(getattr(dropped, name))
        kept = after != 0
        np.testing.assert_allclose(after[kept], before[kept] / (1.0 - rate), rtol=1e-6)
        # 288 entries each: the share dropped is `rate` up to sampling noise (5 sigma).
        assert abs((~kept).mean() - rate) <= 5 * np.sqrt(rate * (1 - rate) / kept.size)
    for name in ("user_embeddings", "candidate_post_embeddings", "candidate_author_embeddings"):
        np.testing.assert_array_equal(getattr(dropped, name), getattr(embeddings, name))


def test_the_expected_embedding_is_unchanged_and_a_dropped_nan_contributes_nothing():
    embeddings = _embeddings()
    keys = jax.random.split(jax.random.key(1), 4000)
    mean = jax.vmap(lambda key: drop_history(embeddings, 0.5, key).history_post_embeddings)(keys)
    np.testing.assert_allclose(
        mean.mean(axis=0), embeddings.history_post_embeddings, rtol=0.1, atol=0.1
    )
    poisoned = eqx.tree_at(
        lambda e: e.history_post_embeddings,
        embeddings,
        embeddings.history_post_embeddings.at[0, 0].set(jnp.nan),
    )
    with_nan = drop_history(poisoned, 0.99, jax.random.key(0))
    row = np.asarray(with_nan.history_post_embeddings[0, 0])
    assert np.all(np.isnan(row) | (row == 0)) and np.any(row == 0)


def _retrieval_example(dropout_key=None) -> tuple[TrainableRetriever, SequenceExample]:
    config = tiny_retrieval_config(history=6, user_pooling="last")
    model = TrainableRetriever(config, 50, 50, 50, key=jax.random.key(0))
    batch, _ = example_inputs(config, batch_size=3, candidates=1)
    # Left-aligned histories of 6, 3 and 0 items; every prefix predicts some corpus row.
    valid = np.arange(6)[None, :] < np.array([[6], [3], [0]])
    batch = eqx.tree_at(
        lambda b: b.history_post_hashes,
        batch,
        jnp.where(valid[..., None], batch.history_post_hashes, 0),
    )
    lengths = valid.sum(axis=1)[:, None]
    targets = jnp.asarray(np.where(np.arange(7)[None, :] <= lengths, 1 + np.arange(7) % 5, 0))
    corpus = jax.random.randint(jax.random.key(2), (6, batch.history_post_hashes.shape[-1]), 1, 50)
    corpus = corpus.at[0].set(0)
    example = SequenceExample(
        batch=batch,
        targets=targets,
        target_log_q=jnp.zeros(targets.shape),
        corpus_post_hashes=corpus,
        corpus_author_hashes=corpus[:, :2],
        dropout_key=dropout_key,
    )
    return model, example


def test_the_objective_drops_only_when_asked_and_each_key_drops_differently():
    model, example = _retrieval_example(jax.random.key(0))
    plain, _ = all_positions_objective(model, example)
    keyless, _ = all_positions_objective(*_retrieval_example())
    assert float(plain) == float(keyless)  # a key alone changes nothing
    first, _ = all_positions_objective(model, example, dropout=0.5)
    again, _ = all_positions_objective(model, example, dropout=0.5)
    _, other_key = _retrieval_example(jax.random.key(1))
    other, _ = all_positions_objective(model, other_key, dropout=0.5)
    assert np.isfinite(float(first)) and float(first) == float(again)
    assert float(first) != float(plain) and float(first) != float(other)


@library_checks_only()
def test_dropout_without_a_key_or_out_of_range_is_an_error():
    model, example = _retrieval_example()
    with pytest.raises(ValueError, match="example.dropout_key: expected a PRNG key"):
        all_positions_objective(model, example, dropout=0.5)
    with pytest.raises(ValueError, match=r"dropout: expected a rate in \[0, 1\), got 1.0"):
        all_positions_objective(model, example, dropout=1.0)
    with pytest.raises(ValueError, match=r"dropout: expected a finite number in \[0.0, 1.0\)"):
        px.FitOptions(dropout=1.0)
