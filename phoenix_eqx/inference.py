"""Jitted inference: rank, encode users and candidates, retrieve top-k from a corpus.

The seed's runners were Python objects around `hk.transform`; these are plain functions of a
model and its inputs, compiled once per shape with `eqx.filter_jit`. They call the models'
own methods and add no maths of their own.
"""

from typing import SupportsIndex

import equinox as eqx
from jaxtyping import Array, Bool, Float

from .inputs import RankingOutput, RecsysBatch, RecsysEmbeddings, RetrievalOutput
from .kernels.dispatch import Implementation, check_implementation, static_int
from .ranker import PhoenixModel
from .retrieval import Corpus, PhoenixRetrievalModel, set_corpus
from .serving import rank_chunked

__all__ = [
    "Corpus",
    "encode_candidates",
    "encode_items",
    "encode_users",
    "rank",
    "retrieve",
    "set_corpus",
]


def rank(
    model: PhoenixModel,
    batch: RecsysBatch,
    embeddings: RecsysEmbeddings,
    *,
    candidate_chunk: SupportsIndex | None = None,
) -> RankingOutput:
    """Score every candidate for every action and rank candidates by favorite probability.

    With `candidate_chunk`, each user's prefix is encoded once and the candidates are scored
    that many at a time against it, in memory that does not grow with their number
    (`serving.rank_chunked`; same results to float rounding).
    """
    if candidate_chunk is not None:
        candidate_chunk = static_int(candidate_chunk, "candidate_chunk", minimum=1)
    return _rank(model, batch, embeddings, candidate_chunk)


@eqx.filter_jit
def _rank(model, batch, embeddings, candidate_chunk):
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
def encode_items(
    model: PhoenixRetrievalModel,
    post_embeddings: Float[Array, "*items item_hashes emb"],
    author_embeddings: Float[Array, "*items author_hashes emb"],
) -> Float[Array, "*items emb"]:
    """Unit item vectors (`PhoenixRetrievalModel.encode_items`), e.g. to build a corpus with
    `set_corpus`; `HashEmbeddingTables.item_embeddings` gives the inputs from item hashes."""
    return model.encode_items(post_embeddings, author_embeddings)


@eqx.filter_jit
def encode_candidates(
    model: PhoenixRetrievalModel, batch: RecsysBatch, embeddings: RecsysEmbeddings
) -> tuple[Float[Array, "batch candidates emb"], Bool[Array, "batch candidates"]]:
    """Unit candidate vectors and their validity."""
    return model.encode_candidates(batch, embeddings)


def retrieve(
    model: PhoenixRetrievalModel,
    batch: RecsysBatch,
    embeddings: RecsysEmbeddings,
    corpus: Corpus,
    k: SupportsIndex = 100,
    *,
    implementation: Implementation = "auto",
) -> RetrievalOutput:
    """Each user's `k` best corpus items (indices into the corpus; see `Corpus.lookup_post_ids`).

    Masked items are never returned; with fewer than `k` valid items the tail holds index -1
    and score -inf. A bfloat16 corpus (`set_corpus(..., dtype=jnp.bfloat16)`) lets `"auto"`
    take the top-k kernel on a Hopper GPU.
    """
    k = static_int(k, "k", minimum=1, maximum=corpus.embeddings.shape[0])
    check_implementation(implementation)
    return _retrieve(model, batch, embeddings, corpus, k, implementation)


@eqx.filter_jit
def _retrieve(model, batch, embeddings, corpus, k, implementation):
    return model(batch, embeddings, corpus, k, implementation=implementation)
