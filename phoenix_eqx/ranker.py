"""The Phoenix ranking model: candidates scored for 19 actions with candidate isolation."""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from .config import PhoenixModelConfig
from .embedding import InputEmbedding
from .inputs import RankingOutput, RecsysBatch, RecsysEmbeddings, check_inputs
from .transformer import RMSNorm, Transformer, token_positions, truncated_normal_init


class PhoenixModel(eqx.Module):
    """Ranker: transformer over `[user | history | candidates]`, where each candidate sees the
    user, the history and itself, never another candidate, so its score is independent of
    which other candidates share the batch.
    """

    embedding: InputEmbedding
    transformer: Transformer
    final_norm: RMSNorm
    unembedding: Float[Array, "emb actions"]
    config: PhoenixModelConfig = eqx.field(static=True)

    def __init__(self, config: PhoenixModelConfig, *, key: PRNGKeyArray):
        embedding_key, transformer_key, unembedding_key = jax.random.split(key, 3)
        self.embedding = InputEmbedding(config, with_candidates=True, key=embedding_key)
        self.transformer = Transformer(config.model, key=transformer_key)
        self.final_norm = RMSNorm(config.emb_size)
        self.unembedding = truncated_normal_init(
            unembedding_key, (config.emb_size, config.num_actions), config.emb_size
        )
        self.config = config

    def __call__(
        self, batch: RecsysBatch, embeddings: RecsysEmbeddings
    ) -> Float[Array, "batch candidates actions"]:
        """Action logits of every candidate, in the forward dtype."""
        config = self.config
        check_inputs(batch, embeddings, config, needs_candidates=True)
        prefix, prefix_valid = self.embedding.prefix_tokens(batch, embeddings)
        candidates, candidate_valid = self.embedding.candidate_tokens(batch, embeddings)
        tokens = jnp.concatenate([prefix, candidates.astype(prefix.dtype)], axis=1)
        valid = jnp.concatenate([prefix_valid, candidate_valid], axis=1)
        num_prefix, num_candidates = prefix.shape[1], candidates.shape[1]
        positions = token_positions(prefix_valid, num_candidates, config.model.candidate_positions)
        hidden = self.transformer(tokens, positions, valid, num_prefix)
        candidate_hidden = self.final_norm(hidden)[:, num_prefix:]
        logits = jnp.dot(candidate_hidden.astype(jnp.float32), self.unembedding)
        return logits.astype(config.fprop_dtype)

    def rank(self, batch: RecsysBatch, embeddings: RecsysEmbeddings) -> RankingOutput:
        """Probabilities (sigmoid of the logits) and candidates ranked by favorite probability."""
        logits = self(batch, embeddings)
        return ranking_output(logits, batch.candidate_valid)


def ranking_output(
    logits: Float[Array, "batch candidates actions"], candidate_valid
) -> RankingOutput:
    # The seed takes the sigmoid in the forward dtype; ranking on those values keeps its order.
    probabilities = jax.nn.sigmoid(logits)
    # Stable sort on (invalid last, then descending favorite probability).
    favorite = probabilities[..., 0].astype(jnp.float32)
    sort_key = jnp.where(candidate_valid, -favorite, jnp.inf)
    ranked = jnp.argsort(sort_key, axis=-1, stable=True).astype(jnp.int32)
    return RankingOutput(
        logits=logits.astype(jnp.float32),
        probabilities=probabilities.astype(jnp.float32),
        ranked_indices=ranked,
        candidate_valid=candidate_valid,
    )
