"""The Mosaic GPU candidate-attention kernel against the reference op, forward and gradients.

On the CPU the kernel runs in Mosaic GPU's interpreter, which simulates every CTA (about a
second each), so the drawn shapes stay within one or two 128-row tiles per (batch, head).
The `gpu` tests run the compiled kernels, both forms, on a Hopper GPU.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from phoenix_eqx.kernels.candidate_attention import (
    candidate_attention,
    candidate_attention_reference,
)
from phoenix_eqx.kernels.candidate_attention.mosaic_gpu import candidate_attention_pallas

# Bounds on the error against the f32 reference on the same inputs: RMS(error) must stay under
# rtol * RMS(reference) + atol. The kernel rounds the probabilities to the input dtype before
# they multiply the values (measured: bf16 ~1e-3 relative, f16 ~2e-4). The backward, like every
# flash-attention backward, forms delta = rowsum(out * d_out) from the output rounded to the
# input dtype. That costs about u * sqrt(head_dim) in delta (u: the dtype's unit roundoff, unit
# normal inputs), hence about u * scale * sqrt(head_dim) in dq and dk; where a row's softmax is
# nearly one-hot its true gradient is smaller than that (seen: 0.7 of it), hence the absolute
# term GRAD_ATOL_UNITS times that size.
TOLERANCES = {
    jnp.bfloat16: {"out_rtol": 1e-2, "grad_rtol": 2e-2, "unit_roundoff": 2.0**-8},
    jnp.float16: {"out_rtol": 2e-3, "grad_rtol": 4e-3, "unit_roundoff": 2.0**-11},
}
GRAD_ATOL_UNITS = 2.0
HEAD_COUNTS = [(1, 1), (2, 1), (2, 2), (3, 1)]  # (q heads, kv heads)
KEY_PADDING = ["none", "random", "empty_history", "invalid_user"]


def make_key_valid(padding, batch, seq_len, num_prefix, key):
    """`key_valid` for one of the padding patterns; row 0 carries the pattern."""
    valid = np.ones((batch, seq_len), bool)
    if padding == "random":
        valid = np.asarray(jax.random.bernoulli(key, 0.7, (batch, seq_len)))
    elif padding == "empty_history":
        valid[0, 1:num_prefix] = False  # the user token is the whole prefix
    elif padding == "invalid_user":
        valid[0, 0] = False  # a causal query 0 then has no key at all
    return jnp.asarray(valid)


def make_inputs(seed, batch, seq_len, num_q_heads, num_kv_heads, head_dim, dtype):
    keys = jax.random.split(jax.random.key(seed), 4)
    q = jax.random.normal(keys[0], (batch, seq_len, num_q_heads, head_dim), jnp.float32)
    k, v = (
        jax.random.normal(key, (batch, seq_len, num_kv_heads, head_dim), jnp.float32)
        for key in keys[1:3]
    )
    d_out = jax.random.normal(keys[3], q.shape, jnp.float32)
    return q.astype(dtype), k.astype(dtype), v.astype(dtype), d_out


def output_and_grads(attend, q, k, v, d_out):
    def loss(q, k, v):
        out = attend(q, k, v)
        return jnp.sum(out.astype(jnp.float32) * d_out), out

    grads, out = jax.grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v)
    return out, grads


def rms(x):
    return float(np.sqrt(np.mean(np.square(np.asarray(x, np.float64)))))


def assert_close(actual, expected, rtol, atol, name):
    actual, expected = np.asarray(actual, np.float32), np.asarray(expected, np.float32)
    assert np.all(np.isfinite(actual)), f"{name}: non-finite values"
    error, bound = rms(actual - expected), rtol * rms(expected) + atol
    assert error <= bound, f"{name}: RMS error {error:.3g} > {bound:.3g}"


def check_against_reference(q, k, v, d_out, options, interpret=True, **kernel_options):
    """Kernel output and dq, dk, dv against the f32 reference on the same (rounded) inputs."""

    def kernel(q, k, v):
        return candidate_attention_pallas(q, k, v, interpret=interpret, **options, **kernel_options)

    def reference(q, k, v):
        return candidate_attention_reference(q, k, v, **options)

    out, grads = output_and_grads(kernel, q, k, v, d_out)
    f32 = [x.astype(jnp.float32) for x in (q, k, v)]
    ref_out, ref_grads = output_and_grads(reference, *f32, d_out)
    tolerance = TOLERANCES[q.dtype.type]
    grad_atol = GRAD_ATOL_UNITS * tolerance["unit_roundoff"] * options["scale"]
    grad_atol *= math.sqrt(q.shape[-1])
    assert out.dtype == q.dtype and out.shape == q.shape
    assert_close(out, ref_out, tolerance["out_rtol"], 0.0, "out")
    for name, grad, ref_grad, primal in zip("qkv", grads, ref_grads, (q, k, v), strict=True):
        assert grad.dtype == primal.dtype and grad.shape == primal.shape, name
        assert_close(grad, ref_grad, tolerance["grad_rtol"], grad_atol, f"d{name}")
    # Rows without any allowed key must come out as exact zeros, not merely small.
    np.testing.assert_array_equal(np.asarray(out, np.float32)[np.asarray(ref_out) == 0], 0)


# Half the profile's examples: each simulates every CTA of a forward and a backward pass.
@settings(max_examples=max(settings().max_examples // 2, 1))
@given(
    seed=st.integers(0, 2**16),
    batch=st.integers(1, 2),
    num_prefix=st.integers(0, 100),
    num_candidates=st.integers(1, 28),
    heads=st.sampled_from(HEAD_COUNTS),
    head_dim=st.sampled_from([64, 128]),
    history=st.sampled_from(["causal", "bidirectional"]),
    cap=st.sampled_from([None, "tanh", "soft_sign"]),
    padding=st.sampled_from(KEY_PADDING),
    dtype=st.sampled_from([jnp.bfloat16, jnp.float16]),
)
def test_kernel_matches_reference(
    seed, batch, num_prefix, num_candidates, heads, head_dim, history, cap, padding, dtype
):
    seq_len = num_prefix + num_candidates
    q, k, v, d_out = make_inputs(seed, batch, seq_len, *heads, head_dim, dtype)
    options = dict(
        num_prefix=num_prefix,
        key_valid=make_key_valid(padding, batch, seq_len, num_prefix, jax.random.key(seed + 1)),
        history=history,
        # Large enough that a cap of 2 bends the logits of unit-normal q, k noticeably.
        scale=1.0 / math.sqrt(head_dim) * 2,
        logit_cap=None if cap is None else 2.0,
        cap_method=cap or "tanh",
    )
    check_against_reference(q, k, v, d_out, options)


@pytest.mark.parametrize("history", ["causal", "bidirectional"])
def test_several_tiles_and_an_empty_prefix_row(history):
    # 200 tokens pad to two 128-row tiles; the prefix ends inside the second one, and batch
    # row 1 has no valid prefix key, so its prefix queries get zeros and its candidates only
    # themselves.
    batch, num_prefix, seq_len = 2, 150, 200
    q, k, v, d_out = make_inputs(7, batch, seq_len, 2, 1, 64, jnp.bfloat16)
    key_valid = jnp.ones((batch, seq_len), bool).at[1, :num_prefix].set(False)
    options = dict(
        num_prefix=num_prefix,
        key_valid=key_valid,
        history=history,
        scale=0.125,
        logit_cap=30.0,
        cap_method="tanh",
    )
    check_against_reference(q, k, v, d_out, options)


def test_candidates_never_see_each_other():
    num_prefix, seq_len = 40, 60
    q, k, v, _ = make_inputs(3, 1, seq_len, 2, 1, 64, jnp.bfloat16)
    options = dict(
        num_prefix=num_prefix,
        key_valid=None,
        history="causal",
        scale=0.125,
        logit_cap=None,
        cap_method="tanh",
    )
    out = candidate_attention_pallas(q, k, v, interpret=True, **options)
    # Change one candidate's key and value: only its own row may move.
    changed = 50
    k2 = k.at[:, changed].multiply(-3.0)
    v2 = v.at[:, changed].add(5.0)
    out2 = candidate_attention_pallas(q, k2, v2, interpret=True, **options)
    moved = np.any(np.asarray(out != out2), axis=(0, 2, 3))
    np.testing.assert_array_equal(np.flatnonzero(moved), [changed])


def test_no_valid_key_gives_zeros_and_zero_gradients():
    q, k, v, d_out = make_inputs(5, 1, 20, 2, 2, 64, jnp.float16)
    options = dict(
        num_prefix=10,
        key_valid=jnp.zeros((1, 20), bool),
        history="causal",
        scale=0.125,
        logit_cap=None,
        cap_method="tanh",
    )

    def kernel(q, k, v):
        return candidate_attention_pallas(q, k, v, interpret=True, **options)

    out, grads = output_and_grads(kernel, q, k, v, d_out)
    for array in (out, *grads):
        np.testing.assert_array_equal(np.asarray(array, np.float32), 0)


def test_api_dispatches_to_the_kernel():
    q, k, v, _ = make_inputs(11, 1, 30, 2, 1, 64, jnp.bfloat16)
    options = dict(num_prefix=20, history="bidirectional", scale=0.125, logit_cap=30.0)
    via_api = candidate_attention(q, k, v, implementation="pallas", interpret=True, **options)
    direct = candidate_attention_pallas(
        q, k, v, interpret=True, key_valid=None, cap_method="tanh", **options
    )
    np.testing.assert_array_equal(np.asarray(via_api), np.asarray(direct))


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(head_dim=32), "head_dim"),
        (dict(dtype=jnp.float32), "dtype"),
        (dict(block_kv=96), "block_kv"),
        (dict(register_operands=True), "register_operands"),
    ],
)
def test_bad_arguments(change, message):
    head_dim, dtype = change.pop("head_dim", 64), change.pop("dtype", jnp.bfloat16)
    q, k, v, _ = make_inputs(0, 1, 8, 1, 1, head_dim, dtype)
    with pytest.raises(ValueError, match=message):
        candidate_attention_pallas(
            q,
            k,
            v,
            interpret=True,
            num_prefix=4,
            key_valid=None,
            history="causal",
            scale=1.0,
            logit_cap=None,
            cap_method="tanh",
            **change,
        )


@pytest.mark.gpu
@pytest.mark.parametrize("register_operands", [True, False])
@pytest.mark.parametrize(
    "history, cap, dtype, head_dim",
    [
        ("causal", "tanh", jnp.bfloat16, 128),
        ("bidirectional", "soft_sign", jnp.float16, 64),
    ],
)
def test_compiled_kernel_matches_reference(register_operands, history, cap, dtype, head_dim):
    batch, num_prefix, seq_len = 3, 300, 501
    q, k, v, d_out = make_inputs(13, batch, seq_len, 8, 2, head_dim, dtype)
    options = dict(
        num_prefix=num_prefix,
        key_valid=make_key_valid("random", batch, seq_len, num_prefix, jax.random.key(2)),
        history=history,
        scale=1.0 / math.sqrt(head_dim),
        logit_cap=30.0,
        cap_method=cap,
    )
    check_against_reference(
        q, k, v, d_out, options, interpret=False, register_operands=register_operands
    )
