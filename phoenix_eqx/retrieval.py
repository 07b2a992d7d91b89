"""The Phoenix two-tower retrieval model: a transformer user tower and an MLP candidate tower."""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from .config import PhoenixRetrievalModelConfig
from .embedding import InputEmbedding
from .inputs import RecsysBatch, RecsysEmbeddings, RetrievalOutput, check_inputs
from .kernels import corpus_top_k
from .kernels._dispatch import Implementation
from .transformer import Transformer, token_positions, truncated_normal_init

NORM_EPS = 1e-12


def l2_normalize(
    x: Float[Array, "*batch dim"],
) -> tuple[Float[Array, "*batch dim"], Float[Array, "*batch 1"]]:
    """`x / sqrt(max(sum(x^2), 1e-12))`, and the norm it divided by."""
    norm = jnp.sqrt(jnp.maximum(jnp.sum(jnp.square(x), axis=-1, keepdims=True), NORM_EPS))
    return x / norm, norm


class CandidateTower(eqx.Module):
    """`normalize(silu(concat(post, author) @ P1) @ P2)`: items into the users' space."""

    projection_1: Float[Array, "features hidden"]
    projection_2: Float[Array, "hidden emb"]

    def __init__(self, num_hashes: int, emb_size: int, *, key: PRNGKeyArray):
        key_1, key_2 = jax.random.split(key)
        features = num_hashes * emb_size
        self.projection_1 = truncated_normal_init(key_1, (features, 2 * emb_size), features)
        self.projection_2 = truncated_normal_init(key_2, (2 * emb_size, emb_size), 2 * emb_size)

    def __call__(
        self, post_author_embeddings: Float[Array, "*batch hashes emb"]
    ) -> Float[Array, "*batch emb"]:
        flat = post_author_embeddings.reshape(*post_author_embeddings.shape[:-2], -1)
        hidden = jax.nn.silu(jnp.dot(flat.astype(jnp.float32), self.projection_1))
        normalized, _ = l2_normalize(jnp.dot(hidden, self.projection_2))
        return normalized.astype(post_author_embeddings.dtype)


class PhoenixRetrievalModel(eqx.Module):
    """Retrieval: users and items as unit vectors, scored by dot product against a corpus."""

    embedding: InputEmbedding
    transformer: Transformer
    candidate_tower: CandidateTower
    config: PhoenixRetrievalModelConfig = eqx.field(static=True)

    def __init__(self, config: PhoenixRetrievalModelConfig, *, key: PRNGKeyArray):
        embedding_key, transformer_key, tower_key = jax.random.split(key, 3)
        self.embedding = InputEmbedding(config, with_candidates=False, key=embedding_key)
        self.transformer = Transformer(config.model, key=transformer_key)
        hashes = config.hash_config.num_item_hashes + config.hash_config.num_author_hashes
        self.candidate_tower = CandidateTower(hashes, config.emb_size, key=tower_key)
        self.config = config

    def encode_users(
        self, batch: RecsysBatch, embeddings: RecsysEmbeddings
    ) -> tuple[Float[Array, "batch emb"], Float[Array, "batch 1"]]:
        """Unit user vectors (float32) and their norms before normalisation.

        The user tower attends over `[user | history]` (causal, as in the seed, unless the
        config says bidirectional) and averages the outputs over valid positions.
        """
        check_inputs(batch, embeddings, self.config, needs_candidates=False)
        tokens, valid = self.embedding.prefix_tokens(batch, embeddings)
        positions = token_positions(valid, 0, self.config.model.candidate_positions)
        hidden = self.transformer(tokens, positions, valid, tokens.shape[1])
        weights = valid.astype(jnp.float32)[:, :, None]
        summed = jnp.sum(hidden * weights, axis=1)
        mean = summed / jnp.maximum(jnp.sum(weights, axis=1), 1.0)
        return l2_normalize(mean)

    def encode_candidates(
        self, batch: RecsysBatch, embeddings: RecsysEmbeddings
    ) -> tuple[Float[Array, "batch candidates emb"], Bool[Array, "batch candidates"]]:
        """Unit candidate vectors from the candidate tower, and which candidates are valid."""
        check_inputs(batch, embeddings, self.config, needs_candidates=False)
        post_author = jnp.concatenate(
            [embeddings.candidate_post_embeddings, embeddings.candidate_author_embeddings],
            axis=2,
        )
        return self.candidate_tower(post_author), batch.candidate_valid

    def __call__(
        self,
        batch: RecsysBatch,
        embeddings: RecsysEmbeddings,
        corpus: Float[Array, "num_items emb"],
        top_k: int,
        corpus_mask: Bool[Array, " num_items"] | None = None,
        *,
        implementation: Implementation = "auto",
    ) -> RetrievalOutput:
        """Encode the users, then take each one's `top_k` corpus items by dot product."""
        users, _ = self.encode_users(batch, embeddings)
        best = corpus_top_k(
            users, corpus, top_k, corpus_mask=corpus_mask, implementation=implementation
        )
        return RetrievalOutput(
            user_representation=users, top_k_indices=best.indices, top_k_scores=best.scores
        )
