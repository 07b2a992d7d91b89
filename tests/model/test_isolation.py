"""Candidate isolation as the ops' and the model's contract: the cached-prefix attention equals
the candidate rows of the whole-sequence op, and nothing an invalid position holds (NaN, inf)
reaches any other output."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from phoenix_eqx.kernels import cached_candidate_attention, candidate_attention

import phoenix_eqx as px
from phoenix_eqx.inference import rank

from ..helpers import example_inputs, tiny_ranker_config

POISONS = [np.nan, np.inf, -np.inf]


def attention_inputs(seed, batch, seq_len, heads, head_dim, dtype=jnp.float32):
    q_heads, kv_heads = heads
    keys = jax.random.split(jax.random.key(seed), 3)
    q = 2 * jax.random.normal(keys[0], (batch, seq_len, q_heads, head_dim))
    k = 2 * jax.random.normal(keys[1], (batch, seq_len, kv_heads, head_dim))
    v = jax.random.normal(keys[2], (batch, seq_len, kv_heads, head_dim))
    return q.astype(dtype), k.astype(dtype), v.astype(dtype)


def cached_from_full(q, k, v, key_valid, num_prefix, **options):
    """The cached op on the candidate part, given the prefix part as its cache."""
    return cached_candidate_attention(
        q[:, num_prefix:],
        k[:, num_prefix:],
        v[:, num_prefix:],
        k[:, :num_prefix],
        v[:, :num_prefix],
        prefix_valid=key_valid[:, :num_prefix],
        candidate_valid=key_valid[:, num_prefix:],
        **options,
    )


# Fixed shapes, so that each test compiles once; the data, masks and poisons vary.
NUM_PREFIX, NUM_CANDIDATES, BATCH = 5, 4, 3
CAPS = [(None, "tanh"), (5.0, "tanh"), (2.0, "soft_sign")]


@functools.cache
def full_and_cached(history: str, logit_cap, cap_method: str):
    """Jitted: the whole-sequence op, and the cached op on the same inputs (xla path)."""
    options = dict(scale=0.5, logit_cap=logit_cap, cap_method=cap_method, implementation="xla")

    @jax.jit
    def run(q, k, v, key_valid):
        full = candidate_attention(
            q, k, v, num_prefix=NUM_PREFIX, key_valid=key_valid, history=history, **options
        )
        return full, cached_from_full(q, k, v, key_valid, NUM_PREFIX, **options)

    return run


@given(
    heads=st.sampled_from([(2, 2), (4, 2)]),
    cap=st.sampled_from(CAPS),
    history=st.sampled_from(["causal", "bidirectional"]),
    seed=st.integers(0, 2**16),
)
def test_cached_attention_equals_candidate_rows_of_the_full_op(heads, cap, history, seed):
    q, k, v = attention_inputs(seed, BATCH, NUM_PREFIX + NUM_CANDIDATES, heads, 4)
    # Padding anywhere, including rows whose every key is padding (they must give zeros).
    key_valid = jax.random.bernoulli(jax.random.key(seed + 1), 0.6, q.shape[:2])
    key_valid = key_valid.at[1, :NUM_PREFIX].set(False)
    full, cached = full_and_cached(history, *cap)(q, k, v, key_valid)
    np.testing.assert_allclose(cached, full[:, NUM_PREFIX:], atol=1e-5)


def poison(x, valid, value, seed):
    """`x` with `value` written into a random half of its invalid positions (axis 1)."""
    chosen = jax.random.bernoulli(jax.random.key(seed), 0.5, valid.shape) & ~valid
    return jnp.where(chosen[:, :, None, None], jnp.asarray(value, x.dtype), x)


@functools.cache
def outputs_and_grads(history: str):
    def loss(q, k, v, key_valid):
        out = candidate_attention(
            q, k, v, num_prefix=NUM_PREFIX, key_valid=key_valid, history=history, scale=0.5
        )
        return jnp.sum(jnp.where(key_valid[..., None, None], out, 0.0)), out

    @jax.jit
    def run(q, k, v, key_valid):
        grads, out = jax.grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v, key_valid)
        cached = cached_from_full(q, k, v, key_valid, NUM_PREFIX, scale=0.5)
        return out, grads, cached

    return run


@given(
    seed=st.integers(0, 2**16),
    value=st.sampled_from(POISONS),
    history=st.sampled_from(["causal", "bidirectional"]),
)
def test_invalid_keys_contribute_nothing_forward_and_backward(seed, value, history):
    q, k, v = attention_inputs(seed, BATCH, NUM_PREFIX + NUM_CANDIDATES, (2, 1), 4)
    key_valid = jax.random.bernoulli(jax.random.key(seed + 1), 0.6, q.shape[:2])
    run = outputs_and_grads(history)
    clean, clean_grads, clean_cached = run(q, k, v, key_valid)
    bad_k, bad_v = poison(k, key_valid, value, seed), poison(v, key_valid, value, seed + 2)
    out, grads, cached = run(q, bad_k, bad_v, key_valid)
    rows = np.asarray(key_valid)
    np.testing.assert_array_equal(np.asarray(out)[rows], np.asarray(clean)[rows])
    for grad, clean_grad in zip(grads, clean_grads, strict=True):
        np.testing.assert_array_equal(np.asarray(grad)[rows], np.asarray(clean_grad)[rows])
    candidate_rows = rows[:, NUM_PREFIX:]
    np.testing.assert_array_equal(
        np.asarray(cached)[candidate_rows], np.asarray(clean_cached)[candidate_rows]
    )


def test_kernel_paths_in_the_interpreter():
    """The Pallas forms of both ops equal their references, and poisoned invalid keys change
    no valid row (bf16, one 128-row tile)."""
    num_prefix, seq_len = 20, 50
    q, k, v = attention_inputs(3, 1, seq_len, (2, 1), 64, jnp.bfloat16)
    key_valid = jax.random.bernoulli(jax.random.key(4), 0.7, (1, seq_len)).at[0, 0].set(True)
    options = dict(scale=0.125, logit_cap=30.0)
    pallas = dict(implementation="pallas", interpret=True, **options)
    full = candidate_attention(
        q, k, v, num_prefix=num_prefix, key_valid=key_valid, history="causal", **pallas
    )
    cached = cached_from_full(q, k, v, key_valid, num_prefix, **pallas)
    f32 = [x.astype(jnp.float32) for x in (q, k, v)]
    reference = cached_from_full(*f32, key_valid, num_prefix, implementation="xla", **options)
    # The kernel rounds probabilities to bf16 before they multiply the values (see
    # test_attention_kernel.py): RMS error within 1% of the reference's RMS.
    error = np.asarray(cached, np.float32) - np.asarray(reference)
    assert np.sqrt(np.mean(error**2)) <= 1e-2 * np.sqrt(np.mean(np.asarray(reference) ** 2))
    np.testing.assert_array_equal(np.asarray(cached), np.asarray(full[:, num_prefix:]))
    bad_k, bad_v = poison(k, key_valid, np.nan, 0), poison(v, key_valid, np.inf, 1)
    poisoned = candidate_attention(
        q, bad_k, bad_v, num_prefix=num_prefix, key_valid=key_valid, history="causal", **pallas
    )
    rows = np.asarray(key_valid)
    np.testing.assert_array_equal(np.asarray(poisoned)[rows], np.asarray(full)[rows])


def test_pallas_reports_inputs_it_cannot_take():
    q, k, v = attention_inputs(0, 1, 8, (1, 1), 4)
    valid = jnp.ones((1, 8), bool)
    with pytest.raises(NotImplementedError, match="q: expected bfloat16 or float16"):
        cached_from_full(q, k, v, valid, 4, implementation="pallas")
    # Runtime type checking (on in the suite) may refuse a float first, with a TypeError.
    for bad in (2.5, True, 9):
        with pytest.raises((ValueError, TypeError), match="num_prefix"):
            candidate_attention(q, k, v, num_prefix=bad)
    out = candidate_attention(q, k, v, num_prefix=np.int64(4))
    np.testing.assert_array_equal(out, candidate_attention(q, k, v, num_prefix=4))


# --- the model -------------------------------------------------------------------------------

CANDIDATES = 6


def ranker_and_inputs():
    config = tiny_ranker_config(candidates=CANDIDATES)
    model = px.PhoenixModel(config, key=jax.random.key(0))
    batch, embeddings = example_inputs(config, batch_size=2, candidates=CANDIDATES)
    # Padding: candidate slot 4 of user 0 and the first history slots of user 1.
    batch = dataclasses.replace(
        batch,
        candidate_post_hashes=batch.candidate_post_hashes.at[0, 4].set(0),
        history_post_hashes=batch.history_post_hashes.at[1, :2].set(0),
    )
    return model, batch, embeddings


TARGETS = ["valid_candidate", "padded_candidate", "padded_history"]


@given(target=st.sampled_from(TARGETS), value=st.sampled_from(POISONS), slot=st.integers(0, 5))
def test_poisoned_embeddings_change_no_other_candidates_score(target, value, slot):
    model, batch, embeddings = ranker_and_inputs()
    user, field = {
        "valid_candidate": (1, "candidate_post_embeddings"),
        "padded_candidate": (0, "candidate_post_embeddings"),
        "padded_history": (1, "history_author_embeddings"),
    }[target]
    if target == "padded_candidate":
        slot = 4
    elif target == "padded_history":
        slot = slot % 2
    poisoned = dataclasses.replace(
        embeddings, **{field: getattr(embeddings, field).at[user, slot].set(value)}
    )
    untouched = np.asarray(batch.candidate_valid).copy()
    if target == "valid_candidate":
        untouched[user, slot] = False
    for candidate_chunk in (None, 4):
        clean = rank(model, batch, embeddings, candidate_chunk=candidate_chunk)
        got = rank(model, batch, poisoned, candidate_chunk=candidate_chunk)
        np.testing.assert_array_equal(
            np.asarray(got.logits)[untouched], np.asarray(clean.logits)[untouched]
        )
        # Padding ranks after every valid candidate, whatever its (or their) scores.
        valid = np.asarray(batch.candidate_valid)
        for row in range(valid.shape[0]):
            order = np.asarray(got.ranked_indices[row])
            count = int(valid[row].sum())
            assert valid[row, order[:count]].all() and not valid[row, order[count:]].any()


def test_nan_scores_rank_after_numbers_and_before_padding():
    logits = jnp.array([[[0.5], [np.nan], [2.0], [1.0]]])
    valid = jnp.array([[True, True, True, False]])
    output = px.ranker.ranking_output(logits, valid)
    np.testing.assert_array_equal(output.ranked_indices[0], [2, 0, 1, 3])


def test_chunked_serving_reaches_the_cached_op(monkeypatch):
    """The prefix-cached path runs through `kernels.cached_candidate_attention`."""
    from phoenix_eqx import transformer

    calls = []
    original = transformer.cached_candidate_attention

    def spy(*args, **kwargs):
        calls.append(kwargs["implementation"])
        return original(*args, **kwargs)

    monkeypatch.setattr(transformer, "cached_candidate_attention", spy)
    model, batch, embeddings = ranker_and_inputs()
    cache = model.encode_prefix(batch, embeddings)
    model.score_candidates(cache, batch, embeddings)
    assert calls == [model.config.model.attention_implementation]  # the layer scan's body


def test_zero_candidates_encode_to_an_empty_array():
    config = tiny_ranker_config()
    retrieval = px.PhoenixRetrievalModel(
        px.PhoenixRetrievalModelConfig(
            model=config.model,
            emb_size=config.emb_size,
            history_seq_len=6,
            fprop_dtype=jnp.float32,
            product_surface_vocab_size=4,
        ),
        key=jax.random.key(1),
    )
    batch, embeddings = example_inputs(config, batch_size=2, candidates=1)
    batch = dataclasses.replace(
        batch,
        **{
            f: getattr(batch, f)[:, :0]
            for f in (
                "candidate_post_hashes",
                "candidate_author_hashes",
                "candidate_product_surface",
            )
        },
    )
    embeddings = dataclasses.replace(
        embeddings,
        **{
            f: getattr(embeddings, f)[:, :0]
            for f in ("candidate_post_embeddings", "candidate_author_embeddings")
        },
    )
    vectors, valid = retrieval.encode_candidates(batch, embeddings)
    assert vectors.shape == (2, 0, config.emb_size) and valid.shape == (2, 0)
