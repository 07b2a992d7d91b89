"""Jitted inference: rank, encode users and candidates, hold a corpus, retrieve top-k.

The seed's runners were Python objects around `hk.transform`; these are plain functions of a
model and its inputs, compiled once per shape with `eqx.filter_jit`.
"""

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from .inputs import RankingOutput, RecsysBatch, RecsysEmbeddings, RetrievalOutput
from .kernels._dispatch import Implementation
from .ranker import PhoenixModel
from .retrieval import PhoenixRetrievalModel
from .serving import rank_chunked

UNIT_NORM_TOLERANCE = 1e-2


class Corpus(eqx.Module):
    """Item vectors to retrieve from, their post ids, and which items may be returned."""

    embeddings: Float[Array, "num_items emb"]
    post_ids: Int[Array, " num_items"]
    mask: Bool[Array, " num_items"]

    def lookup_post_ids(self, indices: Int[Array, "*shape"]) -> Int[Array, "*shape"]:
        """Post ids of retrieved indices; index -1 (nothing retrieved) gives post id 0."""
        return jnp.where(indices >= 0, self.post_ids[jnp.maximum(indices, 0)], 0)


def set_corpus(
    embeddings: Float[Array, "num_items emb"],
    post_ids: Int[Array, " num_items"] | None = None,
    mask: Bool[Array, " num_items"] | None = None,
) -> Corpus:
    """Build a `Corpus`, checking shapes and that the vectors are unit-norm (as the model's are).

    `post_ids` default to `0..N-1`, `mask` to all true. Sharded `embeddings` keep their sharding.
    """
    if embeddings.ndim != 2 or embeddings.shape[0] == 0:
        raise ValueError(
            f"embeddings: expected a non-empty [num_items, emb], got shape {embeddings.shape}"
        )
    num_items = embeddings.shape[0]
    if post_ids is None:
        post_ids = jnp.arange(num_items, dtype=jnp.int32)
    if mask is None:
        mask = jnp.ones((num_items,), bool)
    if post_ids.shape != (num_items,):
        raise ValueError(f"post_ids: expected shape ({num_items},), got {post_ids.shape}")
    if mask.shape != (num_items,) or mask.dtype != bool:
        raise ValueError(f"mask: expected bool ({num_items},), got {mask.dtype} {mask.shape}")
    norms = np.asarray(jnp.linalg.norm(embeddings.astype(jnp.float32), axis=-1))
    worst = float(np.max(np.abs(norms - 1.0)))
    if worst > UNIT_NORM_TOLERANCE:
        raise ValueError(
            f"embeddings: expected unit-norm rows (the candidate tower's output), "
            f"got a row whose norm is off by {worst:.3g}"
        )
    return Corpus(embeddings=embeddings, post_ids=post_ids.astype(jnp.int32), mask=mask)


@eqx.filter_jit
def rank(
    model: PhoenixModel,
    batch: RecsysBatch,
    embeddings: RecsysEmbeddings,
    *,
    candidate_chunk: int | None = None,
) -> RankingOutput:
    """Score every candidate for every action and rank candidates by favorite probability.

    With `candidate_chunk`, each user's prefix is encoded once and the candidates are scored
    that many at a time against it, in memory that does not grow with their number
    (`serving.rank_chunked`; same results to float rounding).
    """
    if candidate_chunk is None:
        return model.rank(batch, embeddings)
    return rank_chunked(model, batch, embeddings, candidate_chunk=candidate_chunk)


@eqx.filter_jit
def encode_users(
    model: PhoenixRetrievalModel, batch: RecsysBatch, embeddings: RecsysEmbeddings
) -> tuple[Float[Array, "batch emb"], Float[Array, "batch 1"]]:
    """Unit user vectors and their norms before normalisation."""
    return model.encode_users(batch, embeddings)


@eqx.filter_jit
def encode_candidates(
    model: PhoenixRetrievalModel, batch: RecsysBatch, embeddings: RecsysEmbeddings
) -> tuple[Float[Array, "batch candidates emb"], Bool[Array, "batch candidates"]]:
    """Unit candidate vectors and their validity."""
    return model.encode_candidates(batch, embeddings)


@eqx.filter_jit
def retrieve(
    model: PhoenixRetrievalModel,
    batch: RecsysBatch,
    embeddings: RecsysEmbeddings,
    corpus: Corpus,
    top_k: int = 100,
    *,
    implementation: Implementation = "auto",
) -> RetrievalOutput:
    """Each user's `top_k` corpus items (indices into the corpus; see `Corpus.lookup_post_ids`).

    Masked items are never returned; with fewer than `top_k` valid items the tail holds
    index -1 and score -inf.
    """
    return model(
        batch, embeddings, corpus.embeddings, top_k, corpus.mask, implementation=implementation
    )
