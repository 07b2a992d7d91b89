"""Corpus top-k over a corpus sharded along one mesh axis: local top-k, then an exact merge.

Each device selects the top k of its own shard (with the kernel where it runs), turns local
indices into global ones, and all-gathers the [batch, k] winners; every device then merges the
candidates with the same total order as the op (score key descending, ties to the lower global
index). The global top k is among the shards' local top k, so the merge is exact.
"""

from typing import SupportsIndex

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh, PartitionSpec
from jaxtyping import Array, Bool, Float

from ..dispatch import Implementation
from .api import check_top_k_inputs, corpus_top_k
from .merge import Selection, as_top_k, best_of
from .reference import MASKED_KEY, TopK, score_sort_key


def sharded_corpus_top_k(
    queries: Float[Array, "batch dim"],
    corpus: Float[Array, "num_items dim"],
    k: SupportsIndex,
    *,
    mesh: Mesh,
    axis_name: str,
    corpus_mask: Bool[Array, " num_items"] | None = None,
    implementation: Implementation = "auto",
    interpret: bool = False,
) -> TopK:
    """`corpus_top_k` with `corpus` (and `corpus_mask`) split in equal shards over `axis_name`.

    Returns the same result as the unsharded op, replicated on every device of the mesh.
    """
    k = check_top_k_inputs(queries, corpus, k, corpus_mask)
    if axis_name not in mesh.shape:
        raise ValueError(f"axis_name: expected one of {tuple(mesh.shape)}, got {axis_name!r}")
    num_shards = mesh.shape[axis_name]
    num_items = corpus.shape[0]
    if num_items % num_shards:
        raise ValueError(
            f"corpus: expected a number of items divisible by the {num_shards} shards of "
            f"{axis_name!r}, got {num_items}"
        )
    shard_items = num_items // num_shards
    local_k = min(k, shard_items)

    def local_then_merge(queries, corpus, *mask):
        local = corpus_top_k(
            queries,
            corpus,
            local_k,
            corpus_mask=mask[0] if mask else None,
            implementation=implementation,
            interpret=interpret,
        )
        offset = lax.axis_index(axis_name) * shard_items
        indices = jnp.where(local.indices >= 0, local.indices + offset, -1)
        scores = lax.all_gather(local.scores, axis_name, axis=1, tiled=True)
        indices = lax.all_gather(indices, axis_name, axis=1, tiled=True)
        keys = jnp.where(indices >= 0, score_sort_key(scores), jnp.int32(MASKED_KEY))
        merged = best_of(Selection(keys, indices, scores), k)
        if merged.keys.shape[1] < k:  # every shard smaller than k
            pad = k - merged.keys.shape[1]
            merged = Selection(
                *(
                    jnp.pad(part, ((0, 0), (0, pad)), constant_values=fill)
                    for part, fill in zip(merged, (MASKED_KEY, -1, -jnp.inf), strict=True)
                )
            )
        return as_top_k(merged)

    replicated, split = PartitionSpec(), PartitionSpec(axis_name)
    args = (queries, corpus) if corpus_mask is None else (queries, corpus, corpus_mask)
    in_specs = (replicated, PartitionSpec(axis_name, None), split)[: len(args)]
    return jax.shard_map(
        local_then_merge,
        mesh=mesh,
        in_specs=in_specs,
        out_specs=TopK(replicated, replicated),
        check_vma=False,
    )(*args)
