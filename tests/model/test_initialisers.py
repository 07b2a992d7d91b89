"""The initialisers draw exactly what `jax.random` draws for the same key and shape: cutting a
longer flat draw changes no value, directly, under `vmap` over keys (the stacked layers) and past
the length where draws stop being rounded up."""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from phoenix_eqx import initialisers
from phoenix_eqx.initialisers import TRUNCATED_STD, normal_init, truncated_normal_init

SHAPES = st.lists(st.integers(0, 300), min_size=1, max_size=3).map(tuple)


def _truncated_reference(key, shape, fan_in, scale):
    std = np.sqrt(scale / fan_in) / TRUNCATED_STD
    return np.float32(std) * jax.random.truncated_normal(key, -2.0, 2.0, shape, jnp.float32)


def _assert_same(actual, expected):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.dtype == np.float32 and actual.shape == expected.shape
    np.testing.assert_array_equal(actual, expected)


@given(shape=SHAPES, seed=st.integers(0, 2**31 - 1), fan_in=st.integers(1, 512))
def test_truncated_normal_init_is_the_direct_draw(shape, seed, fan_in):
    key = jax.random.key(seed)
    expected = _truncated_reference(key, shape, fan_in, 0.5)
    _assert_same(truncated_normal_init(key, shape, fan_in, 0.5), expected)


@given(shape=SHAPES, seed=st.integers(0, 2**31 - 1), std=st.floats(1e-3, 10.0))
def test_normal_init_is_the_direct_draw(shape, seed, std):
    key = jax.random.key(seed)
    _assert_same(normal_init(key, shape, std), std * jax.random.normal(key, shape))


def test_draws_under_vmap_and_past_rounding_are_the_direct_draws(monkeypatch):
    keys = jax.random.split(jax.random.key(3), 4)
    shape = (70, 1_000)  # more values than the smallest draw
    _assert_same(
        jax.vmap(lambda key: truncated_normal_init(key, shape, 70))(keys),
        jax.vmap(lambda key: _truncated_reference(key, shape, 70, 1.0))(keys),
    )
    monkeypatch.setattr(initialisers, "LARGEST_ROUNDED", 1_000)
    assert initialisers._draw_length((3, 500)) == 1_500
    key = jax.random.key(4)
    _assert_same(normal_init(key, (3, 500), 2.0), 2.0 * jax.random.normal(key, (3, 500)))
