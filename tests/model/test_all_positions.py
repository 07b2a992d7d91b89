"""All-positions retrieval: one causal pass gives every prefix's user vector."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jaxtyping import Array, Int

import phoenix_eqx as px
from phoenix_eqx.training import full_softmax_loss

from ..helpers import example_inputs, library_checks_only, tiny_retrieval_config

HISTORY = 6


def _first_items(batch: px.RecsysBatch, lengths: Int[Array, " batch"]) -> px.RecsysBatch:
    """The batch with user `b`'s history cut to its first `lengths[b]` items, padding after
    (padding keys are masked, so this is the truncated history encoded on its own)."""
    keep = jnp.arange(HISTORY)[None, :] < lengths[:, None]
    # Every item real first (the example batch has random padding), then the cut.
    post = batch.history_post_hashes.at[:, :, 0].set(
        jnp.maximum(batch.history_post_hashes[:, :, 0], 1)
    )
    return eqx.tree_at(
        lambda b: (b.history_post_hashes, b.history_author_hashes),
        batch,
        (
            jnp.where(keep[..., None], post, 0),
            jnp.where(keep[..., None], batch.history_author_hashes, 0),
        ),
    )


@eqx.filter_jit
def _all_prefixes(model, batch, embeddings):
    return model.encode_all_prefixes(batch, embeddings)


@eqx.filter_jit
def _truncations(model, batch, embeddings, lengths):
    """`[batch, 1 + HISTORY, emb]`: row `t` encodes each history cut to its first `t` items,
    all cuts in one `encode_users` call (stacked on the batch axis)."""
    cuts = [_first_items(batch, jnp.minimum(lengths, t)) for t in range(HISTORY + 1)]
    stacked = jax.tree.map(lambda *xs: jnp.concatenate(xs), *cuts)
    tiled = jax.tree.map(lambda x: jnp.concatenate([x] * (HISTORY + 1)), embeddings)
    users, _ = model.encode_users(stacked, tiled)
    return users.reshape(HISTORY + 1, lengths.shape[0], -1).transpose(1, 0, 2)


@pytest.mark.parametrize("pooling", ["mean", "last"])
@settings(max_examples=3, deadline=None)
@given(
    lengths=st.lists(st.integers(0, HISTORY), min_size=3, max_size=3),
    positions=st.sampled_from(["sequential", "shared"]),
    seed=st.integers(0, 2**16),
)
def test_every_prefix_equals_encoding_the_truncated_history(lengths, positions, pooling, seed):
    config = tiny_retrieval_config(HISTORY, pooling, candidate_positions=positions)
    model = px.PhoenixRetrievalModel(config, key=jax.random.key(seed))
    batch, embeddings = example_inputs(config, batch_size=3, candidates=1, seed=seed)
    lengths = jnp.array(lengths)
    all_users, valid = _all_prefixes(model, _first_items(batch, lengths), embeddings)
    truncations = _truncations(model, batch, embeddings, lengths)
    assert all_users.shape == (3, HISTORY + 1, config.emb_size)
    expected_valid = np.arange(HISTORY + 1)[None, :] <= np.asarray(lengths)[:, None]
    np.testing.assert_array_equal(valid[:, 1:], expected_valid[:, 1:])
    # Prefix t of a user with fewer than t items is its whole history again: compare where valid.
    np.testing.assert_allclose(
        np.where(expected_valid[..., None], all_users, 0.0),
        np.where(expected_valid[..., None], truncations, 0.0),
        atol=1e-5,
    )


def test_all_prefixes_refuses_bidirectional_history_and_right_aligned_batches():
    config = tiny_retrieval_config(HISTORY, history_attention="bidirectional")
    model = px.PhoenixRetrievalModel(config, key=jax.random.key(0))
    batch, embeddings = example_inputs(config, batch_size=3, candidates=1)
    with pytest.raises(ValueError, match="history_attention"):
        model.encode_all_prefixes(batch, embeddings)

    config = tiny_retrieval_config(HISTORY)
    model = px.PhoenixRetrievalModel(config, key=jax.random.key(0))
    right_aligned = eqx.tree_at(
        lambda b: b.history_post_hashes,
        batch,
        batch.history_post_hashes.at[:, 0].set(0),
    )
    with pytest.raises(Exception, match="left-aligned"):
        _all_prefixes(model, right_aligned, embeddings)


def test_full_softmax_loss_is_cross_entropy_over_all_items_ignoring_invalid_rows():
    users = jax.random.normal(jax.random.key(0), (5, 4))
    items = jax.random.normal(jax.random.key(1), (7, 4))
    targets = jnp.array([1, 2, 6, 0, 3])
    valid = jnp.array([True, True, True, False, True])
    loss = full_softmax_loss(users, items, targets, valid, 0.5)
    logits = np.asarray(users @ items.T / 0.5, np.float64)
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    expected = -np.mean([log_probs[i, t] for i, t in enumerate([1, 2, 6, 0, 3]) if i != 3])
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    with library_checks_only(), pytest.raises(ValueError, match="targets"):
        full_softmax_loss(users, items, targets[:4], valid, 0.5)
