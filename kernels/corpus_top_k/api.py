"""Public entry point of the corpus top-k op: contract, checks and dispatch."""

from typing import SupportsIndex

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from ..dispatch import Implementation, static_int, use_pallas
from .reference import TopK, corpus_top_k_reference

QUERY_DTYPES = (jnp.float32, jnp.bfloat16)
CORPUS_DTYPES = (jnp.float32, jnp.bfloat16)
# docs/benchmarks.md (H100): with one query and k >= 1000 the kernel's exact merge costs more
# than XLA's whole-corpus top-k, so "auto" keeps XLA there.
AUTO_XLA_MIN_K_FOR_ONE_QUERY = 1000


def check_top_k_inputs(queries, corpus, k, corpus_mask) -> int:
    """Raise a ValueError naming the first argument that breaks the op's contract; return `k`
    as a Python int (NumPy and concrete JAX integer scalars are accepted)."""
    if queries.ndim != 2 or queries.shape[0] == 0:
        raise ValueError(f"queries: expected a non-empty [batch, dim], got shape {queries.shape}")
    if corpus.ndim != 2 or corpus.shape[0] == 0:
        raise ValueError(f"corpus: expected a non-empty [num_items, dim], got {corpus.shape}")
    if corpus.shape[1] != queries.shape[1]:
        raise ValueError(
            f"corpus: expected width {queries.shape[1]} (the queries' dim), got {corpus.shape[1]}"
        )
    if queries.dtype not in QUERY_DTYPES or corpus.dtype not in CORPUS_DTYPES:
        raise ValueError(
            f"queries, corpus: expected float32 or bfloat16, got {queries.dtype}, {corpus.dtype}"
        )
    num_items = corpus.shape[0]
    k = static_int(k, "k", minimum=1, maximum=num_items)
    if corpus_mask is not None and (corpus_mask.shape != (num_items,) or corpus_mask.dtype != bool):
        raise ValueError(
            f"corpus_mask: expected bool [{num_items}], got {corpus_mask.dtype} {corpus_mask.shape}"
        )
    return k


def corpus_top_k(
    queries: Float[Array, "batch dim"],
    corpus: Float[Array, "num_items dim"],
    k: SupportsIndex,
    *,
    corpus_mask: Bool[Array, " num_items"] | None = None,
    check_nan: bool = False,
    implementation: Implementation = "auto",
    interpret: bool = False,
) -> TopK:
    """Exact top-`k` corpus items per query by dot product, best first.

    Scores are `queries @ corpus.T` accumulated in float32, with the queries cast to the
    corpus dtype. Order: descending score, ties to the lower index; a NaN score ranks below
    every number. Items with `corpus_mask` false are never returned; when fewer than `k` items
    are valid the tail holds index -1 and score -inf. (The original returned masked items with
    score -1e12; this op never returns them.) `check_nan=True` raises on NaN in the inputs.

    `implementation`: `"xla"` scores everything then runs `lax.top_k`; `"pallas"` runs the
    blocked Mosaic GPU kernel, which never writes the [batch, num_items] scores, on a bfloat16
    corpus (a float32 one raises `NotImplementedError`: the tensor cores would round it to tf32,
    and the result would no longer be the float32 top-k); `"auto"` picks the kernel on a Hopper
    GPU for a bfloat16 corpus, except for one query with `k >= 1000`, where XLA is measured
    faster. `interpret=True` runs the kernel in the CPU interpreter.
    """
    k = check_top_k_inputs(queries, corpus, k, corpus_mask)
    if check_nan:
        queries = eqx.error_if(queries, jnp.isnan(queries).any(), "queries: contains NaN")
        corpus = eqx.error_if(corpus, jnp.isnan(corpus).any(), "corpus: contains NaN")
    unsupported = None
    if corpus.dtype != jnp.bfloat16:
        unsupported = (
            f"corpus: expected bfloat16 (float32 would be rounded to tf32 by the tensor cores; "
            f"build it with set_corpus(..., dtype=jnp.bfloat16)), got {corpus.dtype}"
        )
    slower = queries.shape[0] == 1 and k >= AUTO_XLA_MIN_K_FOR_ONE_QUERY
    if use_pallas(implementation, interpret, unsupported, "corpus_top_k", measured_slower=slower):
        from .mosaic_gpu import corpus_top_k_pallas

        return corpus_top_k_pallas(queries, corpus, k, corpus_mask=corpus_mask, interpret=interpret)
    return corpus_top_k_reference(queries, corpus, k, corpus_mask)
