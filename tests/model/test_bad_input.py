"""Bad input gets a ValueError naming the argument and what was expected, before any compute."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import jaxtyping
import numpy as np
import pytest
from phoenix_eqx.kernels import candidate_attention, corpus_top_k

import phoenix_eqx as px
from phoenix_eqx import compat
from phoenix_eqx.inference import set_corpus

from ..helpers import (
    example_inputs,
    library_checks_only,
    load_golden,
    tiny_ranker_config,
    tiny_retrieval_config,
)

RANKER = px.PhoenixModel(tiny_ranker_config(), key=jax.random.key(0))
RETRIEVAL = px.PhoenixRetrievalModel(tiny_retrieval_config(), key=jax.random.key(0))


@pytest.fixture(autouse=True)
def without_runtime_type_checks():
    with library_checks_only():
        yield


def test_the_runtime_type_checker_also_rejects_bad_shapes():
    jaxtyping.config.update("jaxtyping_disable", False)
    with pytest.raises(jaxtyping.TypeCheckError, match="corpus"):
        corpus_top_k(jnp.ones((2, 4)), jnp.ones((5, 3)), 1)


def test_embeddings_that_disagree_with_the_batch():
    batch, embeddings = example_inputs(RANKER.config, batch_size=2)
    _, other = example_inputs(RANKER.config, batch_size=3)
    with pytest.raises(ValueError, match=r"embeddings\.user_embeddings: expected shape \(2,"):
        RANKER(batch, other)


def test_hash_counts_that_differ_from_the_config():
    batch, embeddings = example_inputs(RANKER.config)
    extra_hash = jnp.concatenate([batch.user_hashes, batch.user_hashes[:, :1]], axis=1)
    with pytest.raises(ValueError, match=r"batch\.user_hashes: expected 2 hashes"):
        RANKER(dataclasses.replace(batch, user_hashes=extra_hash), embeddings)


def test_history_longer_than_the_config():
    long_config = tiny_ranker_config(history=9)
    batch, embeddings = example_inputs(long_config)
    with pytest.raises(ValueError, match="history_seq_len=6"):
        RANKER(batch, embeddings)


def test_empty_batch():
    batch, embeddings = example_inputs(RANKER.config)
    empty = jax.tree.map(lambda x: x[:0], (batch, embeddings))
    with pytest.raises(ValueError, match="non-empty batch"):
        RANKER(*empty)


def test_ranker_needs_candidates():
    batch, embeddings = example_inputs(RANKER.config)
    none = dataclasses.replace(
        batch,
        candidate_post_hashes=batch.candidate_post_hashes[:, :0],
        candidate_author_hashes=batch.candidate_author_hashes[:, :0],
        candidate_product_surface=batch.candidate_product_surface[:, :0],
    )
    embeddings = dataclasses.replace(
        embeddings,
        candidate_post_embeddings=embeddings.candidate_post_embeddings[:, :0],
        candidate_author_embeddings=embeddings.candidate_author_embeddings[:, :0],
    )
    with pytest.raises(ValueError, match="at least one candidate"):
        RANKER(none, embeddings)


def test_ids_outside_a_table():
    tables = px.HashEmbeddingTables(50, 50, 50, 16, key=jax.random.key(0))
    batch, _ = example_inputs(RANKER.config)
    bad = dataclasses.replace(batch, user_hashes=batch.user_hashes.at[0, 0].set(50))
    with pytest.raises(ValueError, match=r"batch\.user_hashes: expected ids in \[0, 50\)"):
        tables(bad)
    with pytest.raises(Exception, match=r"batch\.user_hashes: expected ids in \[0, 50\)"):
        jax.block_until_ready(eqx.filter_jit(lambda t, b: t(b))(tables, bad))


def test_top_k_arguments():
    queries, corpus = jnp.ones((2, 4)), jnp.ones((5, 4))
    for k in (0, 6):
        with pytest.raises(ValueError, match=r"k: expected 1 <= k <= 5"):
            corpus_top_k(queries, corpus, k)
    with pytest.raises(ValueError, match="corpus: expected width 4"):
        corpus_top_k(queries, jnp.ones((5, 3)), 1)
    with pytest.raises(ValueError, match="corpus_mask: expected bool"):
        corpus_top_k(queries, corpus, 1, corpus_mask=jnp.ones((4,), bool))
    with pytest.raises(ValueError, match="queries: expected a non-empty"):
        corpus_top_k(jnp.ones((0, 4)), corpus, 1)
    with pytest.raises(ValueError, match="implementation: expected"):
        corpus_top_k(queries, corpus, 1, implementation="cuda")


def test_top_k_nan_check():
    corpus = jnp.ones((5, 4)).at[2, 1].set(jnp.nan)
    with pytest.raises(Exception, match="corpus: contains NaN"):
        jax.block_until_ready(corpus_top_k(jnp.ones((1, 4)), corpus, 2, check_nan=True))


def test_attention_arguments():
    q = jnp.ones((1, 5, 4, 8))
    kv = jnp.ones((1, 5, 2, 8))
    with pytest.raises(ValueError, match="num_prefix: expected 0 <= num_prefix <= 5"):
        candidate_attention(q, kv, kv, num_prefix=6)
    with pytest.raises(ValueError, match="k: expected a kv head count dividing the 4 q heads"):
        candidate_attention(q, jnp.ones((1, 5, 3, 8)), jnp.ones((1, 5, 3, 8)), num_prefix=2)
    with pytest.raises(ValueError, match=r"key_valid: expected bool \[1, 5\]"):
        candidate_attention(q, kv, kv, num_prefix=2, key_valid=jnp.ones((1, 4), bool))
    with pytest.raises(ValueError, match="history: expected"):
        candidate_attention(q, kv, kv, num_prefix=2, history="full")
    with pytest.raises(ValueError, match="q, k, v: expected one floating dtype"):
        candidate_attention(q, kv.astype(jnp.bfloat16), kv, num_prefix=2)
    with pytest.raises(NotImplementedError, match=r"q: expected bfloat16 or float16 with head_dim"):
        candidate_attention(q, kv, kv, num_prefix=2, implementation="pallas")


def test_config_values():
    with pytest.raises(ValueError, match="num_kv_heads: expected a divisor of num_q_heads=4"):
        px.TransformerConfig(16, 8, num_q_heads=4, num_kv_heads=3, num_layers=1)
    with pytest.raises(ValueError, match="history_attention: expected"):
        px.TransformerConfig(16, 8, 2, 2, 1, history_attention="full")
    with pytest.raises(ValueError, match="model.emb_size: expected emb_size=32"):
        px.PhoenixModelConfig(model=px.TransformerConfig(16, 8, 2, 2, 1), emb_size=32)


def test_corpus_must_be_unit_norm():
    with pytest.raises(ValueError, match="embeddings: expected unit-norm rows"):
        set_corpus(jnp.full((3, 4), 2.0))
    with pytest.raises(ValueError, match=r"post_ids: expected integers of shape \(3,\)"):
        set_corpus(jnp.eye(3), post_ids=jnp.arange(2))
    # Only rows the mask lets through are checked; a NaN there is refused.
    rows = jnp.eye(3).at[1].set(jnp.nan)
    mask = jnp.array([True, False, True])
    assert set_corpus(rows, mask=mask).embeddings.shape == (3, 3)
    with pytest.raises(ValueError, match="embeddings: expected finite values"):
        set_corpus(rows)
    assert set_corpus(jnp.eye(3), dtype=jnp.bfloat16).embeddings.dtype == jnp.bfloat16


def test_haiku_loader_names_every_problem():
    golden, _, _ = load_golden()
    params = compat.unflatten_haiku_params(golden, "params_ranker/")
    config = px.demo_ranker_config()
    missing = {m: dict(p) for m, p in params.items()}
    del missing["transformer/decoder_layer_1/linear_v"]
    with pytest.raises(ValueError, match=r"missing \['transformer/decoder_layer_1/linear_v/w'\]"):
        compat.ranker_from_haiku(missing, config)
    extra = {**params, "phoenix_model/bias": {"b": np.zeros(3)}}
    with pytest.raises(ValueError, match=r"unexpected \['phoenix_model/bias/b'\]"):
        compat.ranker_from_haiku(extra, config)
    misshaped = {m: dict(p) for m, p in params.items()}
    misshaped["phoenix_model"]["unembeddings"] = np.zeros((128, 18))
    with pytest.raises(ValueError, match=r"\['unembeddings'\]: expected shape \(128, 19\)"):
        compat.ranker_from_haiku(misshaped, config)


def test_haiku_round_trip():
    exported = compat.ranker_to_haiku(RANKER)
    restored = compat.ranker_from_haiku(exported, RANKER.config)
    for a, b in zip(jax.tree.leaves(RANKER), jax.tree.leaves(restored), strict=True):
        np.testing.assert_array_equal(a, b)
    exported = compat.retrieval_to_haiku(RETRIEVAL)
    restored = compat.retrieval_from_haiku(exported, RETRIEVAL.config)
    for a, b in zip(jax.tree.leaves(RETRIEVAL), jax.tree.leaves(restored), strict=True):
        np.testing.assert_array_equal(a, b)
