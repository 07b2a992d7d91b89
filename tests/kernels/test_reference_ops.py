"""The kernel ops' pure-JAX references against independent formulations."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from phoenix_eqx.kernels import candidate_attention, corpus_top_k


def dense_softmax_attention(q, k, v, allowed, scale, cap):
    """Attention written from the definition in float64: one head at a time, repeated K/V."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    batch, seq, heads, dim = q.shape
    group = heads // k.shape[2]
    out = np.zeros_like(q)
    for b in range(batch):
        for h in range(heads):
            logits = q[b, :, h] @ k[b, :, h // group].T * scale
            if cap is not None:
                logits = cap * np.tanh(logits / cap)
            for i in range(seq):
                keys = np.flatnonzero(allowed[b, i])
                if keys.size:
                    weights = np.exp(logits[i, keys] - logits[i, keys].max())
                    out[b, i, h] = weights @ v[b, keys, h // group] / weights.sum()
    return out


def allowed_pairs(seq, num_prefix, valid, history):
    allowed = np.zeros((valid.shape[0], seq, seq), bool)
    for i in range(seq):
        for j in range(seq):
            if i < num_prefix:
                ok = j < num_prefix and (history == "bidirectional" or j <= i)
            else:
                ok = j < num_prefix or j == i
            allowed[:, i, j] = ok
    return allowed & valid[:, None, :]


@st.composite
def attention_problems(draw):
    batch = draw(st.integers(1, 2))
    num_prefix = draw(st.integers(0, 6))
    num_candidates = draw(st.integers(0 if num_prefix else 1, 5))
    kv_heads = draw(st.sampled_from([1, 2]))
    group = draw(st.sampled_from([1, 2, 3]))
    dim = draw(st.sampled_from([4, 8]))
    history = draw(st.sampled_from(["causal", "bidirectional"]))
    cap = draw(st.sampled_from([None, 5.0]))
    seed = draw(st.integers(0, 2**16))
    return batch, num_prefix, num_candidates, kv_heads, group, dim, history, cap, seed


@given(attention_problems())
def test_reference_attention_equals_dense_softmax(problem):
    batch, num_prefix, num_candidates, kv_heads, group, dim, history, cap, seed = problem
    seq = num_prefix + num_candidates
    keys = jax.random.split(jax.random.key(seed), 4)
    q = jax.random.normal(keys[0], (batch, seq, kv_heads * group, dim))
    k = jax.random.normal(keys[1], (batch, seq, kv_heads, dim))
    v = jax.random.normal(keys[2], (batch, seq, kv_heads, dim))
    valid = np.asarray(jax.random.bernoulli(keys[3], 0.75, (batch, seq)))
    scale = dim**-0.5
    # Jitted: one compilation per drawn shape instead of one per eager op.
    attend = jax.jit(
        functools.partial(
            candidate_attention,
            num_prefix=num_prefix,
            history=history,
            scale=scale,
            logit_cap=cap,
            implementation="xla",
        )
    )
    out = attend(q, k, v, key_valid=jnp.asarray(valid))
    expected = dense_softmax_attention(
        q, k, v, allowed_pairs(seq, num_prefix, valid, history), scale, cap
    )
    np.testing.assert_allclose(out, expected, rtol=2e-5, atol=2e-5)


@given(attention_problems())
def test_grouped_query_equals_repeated_kv(problem):
    batch, num_prefix, num_candidates, kv_heads, group, dim, history, cap, seed = problem
    seq = num_prefix + num_candidates
    keys = jax.random.split(jax.random.key(seed), 3)
    q = jax.random.normal(keys[0], (batch, seq, kv_heads * group, dim))
    k = jax.random.normal(keys[1], (batch, seq, kv_heads, dim))
    v = jax.random.normal(keys[2], (batch, seq, kv_heads, dim))
    options = dict(num_prefix=num_prefix, history=history, logit_cap=cap, implementation="xla")
    attend = jax.jit(functools.partial(candidate_attention, **options))
    grouped = attend(q, k, v)
    repeated = attend(q, jnp.repeat(k, group, axis=2), jnp.repeat(v, group, axis=2))
    np.testing.assert_allclose(grouped, repeated, rtol=1e-6, atol=1e-6)


def numpy_top_k(queries, corpus, k, mask):
    """Full stable sort: descending score, NaN below numbers, masked items dropped."""
    with np.errstate(invalid="ignore"):  # -inf * 0 is NaN, as on the device
        scores = np.asarray(queries, np.float32) @ np.asarray(corpus, np.float32).T
    indices, values = [], []
    for row in scores:
        order = sorted(
            (i for i in range(row.size) if mask is None or mask[i]),
            key=lambda i, row=row: (np.isnan(row[i]), -row[i] if not np.isnan(row[i]) else 0, i),
        )[:k]
        padding = k - len(order)
        indices.append(order + [-1] * padding)
        values.append([row[i] for i in order] + [-np.inf] * padding)
    return np.asarray(values, np.float32), np.asarray(indices)


@st.composite
def top_k_problems(draw):
    batch = draw(st.integers(1, 3))
    num_items = draw(st.integers(1, 40))
    dim = draw(st.sampled_from([2, 4]))
    k = draw(st.integers(1, num_items))
    mask_kind = draw(st.sampled_from(["none", "random", "all_masked", "few_valid"]))
    # Small integer entries make many exactly tied scores.
    seed = draw(st.integers(0, 2**16))
    return batch, num_items, dim, k, mask_kind, seed


@given(top_k_problems())
def test_reference_top_k_equals_full_sort(problem):
    batch, num_items, dim, k, mask_kind, seed = problem
    rng = np.random.default_rng(seed)
    queries = rng.integers(-2, 3, (batch, dim)).astype(np.float32)
    corpus = rng.integers(-2, 3, (num_items, dim)).astype(np.float32)
    corpus[rng.random(num_items) < 0.1, 0] = np.nan
    corpus[rng.random(num_items) < 0.1] = -np.inf
    mask = {
        "none": None,
        "random": rng.random(num_items) < 0.6,
        "all_masked": np.zeros(num_items, bool),
        "few_valid": rng.random(num_items) < 0.1,
    }[mask_kind]
    result = corpus_top_k(
        jnp.asarray(queries),
        jnp.asarray(corpus),
        k,
        corpus_mask=None if mask is None else jnp.asarray(mask),
        implementation="xla",
    )
    expected_scores, expected_indices = numpy_top_k(queries, corpus, k, mask)
    np.testing.assert_array_equal(result.indices, expected_indices)
    np.testing.assert_array_equal(result.scores, expected_scores)
