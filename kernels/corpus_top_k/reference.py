"""Pure-JAX exact top-k over a corpus: the oracle for the kernel, and the XLA path.

Selection runs on integer sort keys rather than on float scores, which gives one total order
with every rule of the contract built in: larger scores first, NaN below every number, masked
items below everything (and never returned), ties to the lower index (`lax.top_k` is stable).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

INT32_MIN = jnp.iinfo(jnp.int32).min
# Key of a NaN score: one below the key of -inf, so NaN ranks under every number.
NAN_KEY = -0x7F800000 - 2  # the key of -inf is -0x7F800001
MASKED_KEY = INT32_MIN


class TopK(NamedTuple):
    """Best `k` corpus items per query, best first; index -1 / score -inf past the valid ones."""

    scores: Float[Array, "batch k"]
    indices: Int[Array, "batch k"]


def score_sort_key(scores: Float[Array, "*shape"]) -> Int[Array, "*shape"]:
    """Map float32 scores to int32 keys whose order is the score order (NaN lowest)."""
    scores = jnp.where(scores == 0, 0.0, scores).astype(jnp.float32)  # -0.0 ties with +0.0
    bits = jax.lax.bitcast_convert_type(scores, jnp.int32)
    # Positive floats already order as integers; negative ones order reversed in the low 31 bits.
    keys = jnp.where(bits >= 0, bits, bits ^ jnp.int32(0x7FFFFFFF))
    return jnp.where(jnp.isnan(scores), jnp.int32(NAN_KEY), keys)


def corpus_scores(
    queries: Float[Array, "batch dim"], corpus: Float[Array, "num_items dim"]
) -> Float[Array, "batch num_items"]:
    """Scores in float32, computed in the corpus dtype (queries are cast to it)."""
    return jnp.dot(
        queries.astype(corpus.dtype),
        corpus.T,
        preferred_element_type=jnp.float32,
        precision=jax.lax.Precision.HIGHEST,
    )


def top_k_of_scores(
    scores: Float[Array, "batch num_items"],
    k: int,
    corpus_mask: Bool[Array, " num_items"] | None,
) -> TopK:
    """Exact top-k of a score matrix under the contract's ordering and masking rules."""
    keys = score_sort_key(scores)
    if corpus_mask is not None:
        keys = jnp.where(corpus_mask[None, :], keys, jnp.int32(MASKED_KEY))
    top_keys, indices = jax.lax.top_k(keys, k)
    returned = top_keys != MASKED_KEY
    top_scores = jnp.take_along_axis(scores, indices, axis=1)
    return TopK(
        scores=jnp.where(returned, top_scores, -jnp.inf).astype(jnp.float32),
        indices=jnp.where(returned, indices, -1).astype(jnp.int32),
    )


def corpus_top_k_reference(
    queries: Float[Array, "batch dim"],
    corpus: Float[Array, "num_items dim"],
    k: int,
    corpus_mask: Bool[Array, " num_items"] | None,
) -> TopK:
    """Score every item, then select: materialises the [batch, num_items] scores."""
    return top_k_of_scores(corpus_scores(queries, corpus), k, corpus_mask)
