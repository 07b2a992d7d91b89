"""Invariants of the models: candidate isolation, padding, positions, normalisation, stacking."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import phoenix_eqx as px

from ..helpers import example_inputs, tiny_ranker_config, tiny_retrieval_config

RANKER = px.PhoenixModel(tiny_ranker_config(), key=jax.random.key(1))
SHARED_RANKER = px.PhoenixModel(
    tiny_ranker_config(candidate_positions="shared"), key=jax.random.key(1)
)
RETRIEVAL = px.PhoenixRetrievalModel(tiny_retrieval_config(), key=jax.random.key(2))
NUM_CANDIDATES = 5


@eqx.filter_jit
def logits_of(model, batch, embeddings):
    return model(batch, embeddings)


@eqx.filter_jit
def users_of(model, batch, embeddings):
    return model.encode_users(batch, embeddings)[0]


@eqx.filter_jit
def _replace_where(tree, field_mask: dict, key):
    """Overwrite the entries of each named field where its mask is true with fresh random values."""
    changes = {}
    for name, mask in field_mask.items():
        key, sub = jax.random.split(key)
        old = getattr(tree, name)
        if jnp.issubdtype(old.dtype, jnp.integer):
            new = jax.random.randint(sub, old.shape, 1, 50, old.dtype)
        else:
            new = jax.random.normal(sub, old.shape, old.dtype)
        mask = mask.reshape(mask.shape + (1,) * (old.ndim - mask.ndim))
        changes[name] = jnp.where(mask, new, old)
    return dataclasses.replace(tree, **changes)


@given(seed=st.integers(0, 2**16), kept=st.integers(0, NUM_CANDIDATES - 1))
def test_candidate_scores_ignore_other_candidates(seed, kept):
    batch, embeddings = example_inputs(RANKER.config, candidates=NUM_CANDIDATES, seed=seed)
    others = jnp.arange(NUM_CANDIDATES)[None, :] != kept
    others = jnp.broadcast_to(others, batch.candidate_product_surface.shape)
    new_batch = _replace_where(
        batch,
        {
            "candidate_post_hashes": others,
            "candidate_author_hashes": others,
            "candidate_product_surface": others,
        },
        jax.random.key(seed + 1),
    )
    new_embeddings = _replace_where(
        embeddings,
        {"candidate_post_embeddings": others, "candidate_author_embeddings": others},
        jax.random.key(seed + 2),
    )
    before = logits_of(RANKER, batch, embeddings)[:, kept]
    after = logits_of(RANKER, new_batch, new_embeddings)[:, kept]
    np.testing.assert_allclose(after, before, rtol=1e-6, atol=1e-6)
    # The changed candidates did change: the test can tell.
    assert not np.allclose(
        logits_of(RANKER, new_batch, new_embeddings), logits_of(RANKER, batch, embeddings)
    )


@given(seed=st.integers(0, 2**16))
def test_padded_history_never_changes_valid_outputs(seed):
    batch, embeddings = example_inputs(RANKER.config, candidates=NUM_CANDIDATES, seed=seed)
    padded = ~batch.history_valid
    history_fields = {"history_author_hashes": padded, "history_actions": padded}
    history_fields["history_product_surface"] = padded
    new_batch = _replace_where(batch, history_fields, jax.random.key(seed + 1))
    new_embeddings = _replace_where(
        embeddings,
        {"history_post_embeddings": padded, "history_author_embeddings": padded},
        jax.random.key(seed + 2),
    )
    np.testing.assert_allclose(
        logits_of(RANKER, new_batch, new_embeddings),
        logits_of(RANKER, batch, embeddings),
        rtol=1e-6,
        atol=1e-6,
    )
    np.testing.assert_allclose(
        users_of(RETRIEVAL, new_batch, new_embeddings),
        users_of(RETRIEVAL, batch, embeddings),
        rtol=1e-6,
        atol=1e-6,
    )


@given(seed=st.integers(0, 2**16), permutation=st.permutations(range(NUM_CANDIDATES)))
def test_shared_positions_make_ranking_permutation_equivariant(seed, permutation):
    batch, embeddings = example_inputs(SHARED_RANKER.config, candidates=NUM_CANDIDATES, seed=seed)
    order = jnp.asarray(permutation)

    def permute(tree, prefix):
        changes = {
            name: getattr(tree, name)[:, order]
            for name in tree.__dataclass_fields__
            if name.startswith(prefix)
        }
        return dataclasses.replace(tree, **changes)

    logits = logits_of(SHARED_RANKER, batch, embeddings)
    permuted = logits_of(
        SHARED_RANKER, permute(batch, "candidate"), permute(embeddings, "candidate")
    )
    np.testing.assert_allclose(permuted, logits[:, order], rtol=1e-5, atol=1e-5)


@given(seed=st.integers(0, 2**16))
def test_representations_have_unit_norm(seed):
    batch, embeddings = example_inputs(RETRIEVAL.config, candidates=NUM_CANDIDATES, seed=seed)
    users = users_of(RETRIEVAL, batch, embeddings)
    np.testing.assert_allclose(jnp.linalg.norm(users, axis=-1), 1.0, rtol=1e-5)
    candidates, _ = RETRIEVAL.encode_candidates(batch, embeddings)
    np.testing.assert_allclose(jnp.linalg.norm(candidates, axis=-1), 1.0, rtol=1e-5)


def test_scanned_transformer_equals_a_loop_over_layers():
    transformer = RANKER.transformer
    key_h, key_v = jax.random.split(jax.random.key(3))
    h = jax.random.normal(key_h, (2, 9, 16))
    valid = jax.random.bernoulli(key_v, 0.8, (2, 9))
    positions = jnp.broadcast_to(jnp.arange(9, dtype=jnp.float32), (2, 9))

    @eqx.filter_jit
    def loop(transformer, h):
        for index in range(transformer.num_layers):
            h = transformer.layer(index)(h, positions, valid, 6)
        return h

    scanned = eqx.filter_jit(transformer)(h, positions, valid, 6)
    np.testing.assert_allclose(scanned, loop(transformer, h), rtol=1e-5, atol=1e-5)


def test_shared_positions_right_align_the_prefix():
    valid = jnp.array([[True, True, False, True, False], [False, True, True, True, True]])
    positions = px.transformer.token_positions(valid, 2, "shared")
    # Valid prefix tokens end at position 4; candidates share position 5.
    np.testing.assert_array_equal(positions[0, [0, 1, 3]], [2, 3, 4])
    np.testing.assert_array_equal(positions[1, 1:5], [1, 2, 3, 4])
    np.testing.assert_array_equal(positions[:, 5:], 5)
