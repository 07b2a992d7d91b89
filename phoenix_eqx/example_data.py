"""Random example inputs with the seed's statistics, for demos, tests and benchmarks."""

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray

from .inputs import RecsysBatch, RecsysEmbeddings

DEFAULT_TABLE_SIZE = 100_000


def create_example_batch(
    batch_size: int,
    emb_size: int,
    history_seq_len: int,
    num_candidates: int,
    num_actions: int = 19,
    num_user_hashes: int = 2,
    num_item_hashes: int = 2,
    num_author_hashes: int = 2,
    product_surface_vocab_size: int = 16,
    *,
    key: PRNGKeyArray,
    table_size: int = DEFAULT_TABLE_SIZE,
) -> tuple[RecsysBatch, RecsysEmbeddings]:
    """A batch of ids and matching embeddings.

    Hashes are drawn from `[1, table_size)`; each user's history is valid up to a random length
    in `[history_seq_len/2, history_seq_len]` and zero-padded after; actions are multi-hot with
    p=0.3; embeddings are standard normal.
    """
    for name, value, low in (
        ("batch_size", batch_size, 1),
        ("emb_size", emb_size, 1),
        ("history_seq_len", history_seq_len, 0),
        ("num_candidates", num_candidates, 1),
        ("table_size", table_size, 2),
    ):
        if value < low:
            raise ValueError(f"{name}: expected >= {low}, got {value}")
    keys = iter(jax.random.split(key, 16))

    def hashes(*shape: int) -> Int[Array, "..."]:
        return jax.random.randint(next(keys), shape, 1, table_size, dtype=jnp.int32)

    lengths = jax.random.randint(
        next(keys), (batch_size, 1), history_seq_len // 2, history_seq_len + 1
    )
    history_valid = jnp.arange(history_seq_len)[None, :] < lengths
    history_post = hashes(batch_size, history_seq_len, num_item_hashes) * history_valid[..., None]
    history_author = (
        hashes(batch_size, history_seq_len, num_author_hashes) * history_valid[..., None]
    )
    actions = jax.random.bernoulli(next(keys), 0.3, (batch_size, history_seq_len, num_actions))
    actions = (actions & history_valid[..., None]).astype(jnp.float32)

    def surfaces(*shape: int) -> Int[Array, "..."]:
        return jax.random.randint(next(keys), shape, 0, product_surface_vocab_size)

    batch = RecsysBatch(
        user_hashes=hashes(batch_size, num_user_hashes),
        history_post_hashes=history_post,
        history_author_hashes=history_author,
        history_actions=actions,
        history_product_surface=surfaces(batch_size, history_seq_len),
        candidate_post_hashes=hashes(batch_size, num_candidates, num_item_hashes),
        candidate_author_hashes=hashes(batch_size, num_candidates, num_author_hashes),
        candidate_product_surface=surfaces(batch_size, num_candidates),
    )

    def normal(*shape: int) -> Float[Array, "..."]:
        return jax.random.normal(next(keys), (*shape, emb_size), jnp.float32)

    embeddings = RecsysEmbeddings(
        user_embeddings=normal(batch_size, num_user_hashes),
        history_post_embeddings=normal(batch_size, history_seq_len, num_item_hashes),
        candidate_post_embeddings=normal(batch_size, num_candidates, num_item_hashes),
        history_author_embeddings=normal(batch_size, history_seq_len, num_author_hashes),
        candidate_author_embeddings=normal(batch_size, num_candidates, num_author_hashes),
    )
    return batch, embeddings


def create_example_corpus(
    corpus_size: int, emb_size: int, *, key: PRNGKeyArray
) -> tuple[Float[Array, "num_items emb"], Int[Array, " num_items"]]:
    """Unit-norm random corpus vectors and their post ids (`1..corpus_size`)."""
    if corpus_size < 1 or emb_size < 1:
        raise ValueError(f"corpus_size, emb_size: expected positive, got {corpus_size}, {emb_size}")
    vectors = jax.random.normal(key, (corpus_size, emb_size), jnp.float32)
    vectors = vectors / jnp.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors, jnp.arange(1, corpus_size + 1, dtype=jnp.int32)
