"""Serving the ranker at scale: encode user + history once, score candidates in chunks.

Candidate isolation makes this exact: at every layer a candidate attends only the prefix's keys
and values at that layer and its own, so the prefix's per-layer K/V (a `PrefixCache`) is all a
candidate needs from the rest of the sequence. The maths is the model's own
(`PhoenixModel.encode_prefix` / `score_candidates`); this module compiles them and loops over
fixed-size chunks, so memory stays bounded whatever the number of candidates.
"""

from typing import SupportsIndex

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from .inputs import RankingOutput, RecsysBatch, RecsysEmbeddings, check_inputs
from .kernels.dispatch import static_int
from .ranker import PhoenixModel, ranking_output
from .transformer import PrefixCache

CANDIDATE_FIELDS = ("candidate_post_hashes", "candidate_author_hashes", "candidate_product_surface")
CANDIDATE_EMBEDDINGS = ("candidate_post_embeddings", "candidate_author_embeddings")


@eqx.filter_jit
def encode_prefix(
    model: PhoenixModel, batch: RecsysBatch, embeddings: RecsysEmbeddings
) -> PrefixCache:
    """`PhoenixModel.encode_prefix`, compiled."""
    return model.encode_prefix(batch, embeddings)


@eqx.filter_jit
def score_candidates(
    model: PhoenixModel,
    cache: PrefixCache,
    batch: RecsysBatch,
    embeddings: RecsysEmbeddings,
    *,
    offset: SupportsIndex | Int[Array, ""] = 0,
) -> Float[Array, "batch candidates actions"]:
    """`PhoenixModel.score_candidates`, compiled."""
    return model.score_candidates(cache, batch, embeddings, offset=offset)


def _candidate_slice(
    batch: RecsysBatch, embeddings: RecsysEmbeddings, start: Int[Array, ""], size: int
) -> tuple[RecsysBatch, RecsysEmbeddings]:
    """`size` candidates from `start` (a traced index): slices, no copy of the whole input."""

    def cut(x):
        return jax.lax.dynamic_slice_in_dim(x, start, size, axis=1)

    batch = eqx.tree_at(
        lambda b: [getattr(b, f) for f in CANDIDATE_FIELDS],
        batch,
        [cut(getattr(batch, f)) for f in CANDIDATE_FIELDS],
    )
    embeddings = eqx.tree_at(
        lambda e: [getattr(e, f) for f in CANDIDATE_EMBEDDINGS],
        embeddings,
        [cut(getattr(embeddings, f)) for f in CANDIDATE_EMBEDDINGS],
    )
    return batch, embeddings


def candidate_logits_chunked(
    model: PhoenixModel,
    cache: PrefixCache,
    batch: RecsysBatch,
    embeddings: RecsysEmbeddings,
    *,
    candidate_chunk: SupportsIndex,
) -> Float[Array, "batch candidates actions"]:
    """`score_candidates` over all candidates, `candidate_chunk` at a time, in a loop.

    Working memory is that of one chunk (plus the [batch, candidates, actions] result): the
    loop slices each chunk out of the inputs and writes its logits into the result in place.
    When the count is not a multiple of the chunk, the last chunk is shifted back to end at the
    last candidate (re-scoring a few, which gives the same values): every chunk has one shape.
    """
    candidate_chunk = static_int(candidate_chunk, "candidate_chunk", minimum=1)
    check_inputs(batch, embeddings, model.config, needs_candidates=True)
    batch_size, num_candidates = batch.candidate_valid.shape
    chunk = min(candidate_chunk, num_candidates)
    num_chunks = -(-num_candidates // chunk)
    result = jnp.zeros(
        (batch_size, num_candidates, model.config.num_actions), model.config.fprop_dtype
    )

    def body(index, result):
        start = jnp.minimum(index * chunk, num_candidates - chunk)
        chunk_batch, chunk_embeddings = _candidate_slice(batch, embeddings, start, chunk)
        logits = model.score_candidates(cache, chunk_batch, chunk_embeddings, offset=start)
        return jax.lax.dynamic_update_slice_in_dim(result, logits, start, axis=1)

    return jax.lax.fori_loop(0, num_chunks, body, result)


def rank_chunked(
    model: PhoenixModel,
    batch: RecsysBatch,
    embeddings: RecsysEmbeddings,
    *,
    candidate_chunk: SupportsIndex = 512,
) -> RankingOutput:
    """`PhoenixModel.rank` for any number of candidates in bounded memory (compiled by its
    callers: `inference.rank(..., candidate_chunk=...)`, `distributed.sharded_rank`).

    Encodes each user's prefix once, then scores the candidates `candidate_chunk` at a time
    against the cache. Results equal the one-shot `rank` (to float rounding).
    """
    candidate_chunk = static_int(candidate_chunk, "candidate_chunk", minimum=1)
    cache = model.encode_prefix(batch, embeddings)
    logits = candidate_logits_chunked(
        model, cache, batch, embeddings, candidate_chunk=candidate_chunk
    )
    return ranking_output(logits, batch.candidate_valid)
