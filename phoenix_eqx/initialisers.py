"""Parameter initialisers whose random draws compile once per size class, not once per shape.

Eager `jax.random` compiles a program for every shape it draws, and building the two models of a
fit draws a dozen shapes: on a 2-core CPU that was 6.5 s of compiling before the first step
(docs/scaling-costs.md). A draw of shape S from a key equals the first prod(S) values of a
longer flat draw from the same key (threefry's counters run over the flattened shape; the tests
check it), so each initialiser draws a power-of-two length and cuts it: the values of drawing S
directly, from one compiled generator per length class. Past `LARGEST_ROUNDED` values the draw
has the exact length, where drawing up to twice the values would cost more than compiling.
"""

import functools
import math

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

# Every draw of fewer values shares the generator of this length.
SMALLEST_DRAW = 1 << 16
# Draws of more values are not rounded up.
LARGEST_ROUNDED = 1 << 22
# The std of a standard normal truncated to [-2, 2].
TRUNCATED_STD = 0.87962566


def truncated_normal_init(
    key: PRNGKeyArray, shape: tuple[int, ...], fan_in: int, scale: float = 1.0
) -> Float[Array, "..."]:
    """Variance-scaling init: a normal truncated to two standard deviations, with variance
    `scale / fan_in` (float32); equal to `std * jax.random.truncated_normal(key, -2, 2, shape)`."""
    std = math.sqrt(scale / fan_in) / TRUNCATED_STD
    return _cut(_flat_truncated_normal(key, _draw_length(shape)), tuple(shape), std)


def normal_init(key: PRNGKeyArray, shape: tuple[int, ...], std: float = 1.0) -> Float[Array, "..."]:
    """`std * jax.random.normal(key, shape)` in float32."""
    return _cut(_flat_normal(key, _draw_length(shape)), tuple(shape), std)


def _draw_length(shape: tuple[int, ...]) -> int:
    size = math.prod(shape)
    if size > LARGEST_ROUNDED:
        return size
    return max(SMALLEST_DRAW, 1 << max(size - 1, 0).bit_length())


@functools.partial(jax.jit, static_argnums=1)
def _flat_normal(key: PRNGKeyArray, length: int) -> Float[Array, " length"]:
    return jax.random.normal(key, (length,), jnp.float32)


@functools.partial(jax.jit, static_argnums=1)
def _flat_truncated_normal(key: PRNGKeyArray, length: int) -> Float[Array, " length"]:
    return jax.random.truncated_normal(key, -2.0, 2.0, (length,), jnp.float32)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _cut(flat: Float[Array, " length"], shape: tuple[int, ...], std: float) -> Float[Array, "..."]:
    return std * flat[: math.prod(shape)].reshape(shape)
