"""The Phoenix ranking model: candidates scored for 19 actions with candidate isolation."""

from typing import SupportsIndex

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from .config import PhoenixModelConfig
from .embedding import InputEmbedding
from .initialisers import truncated_normal_init
from .inputs import RankingOutput, RecsysBatch, RecsysEmbeddings, check_inputs
from .kernels.dispatch import static_int
from .transformer import (
    PrefixCache,
    RMSNorm,
    Transformer,
    candidate_positions,
    prefix_positions,
    token_positions,
)


class PhoenixModel(eqx.Module):
    """Ranker: transformer over `[user | history | candidates]`, where each candidate sees the
    user, the history and itself, never another candidate, so its score is independent of
    which other candidates share the batch.

    Two ways to run it, with equal results: `__call__` takes the whole sequence at once
    (training, short candidate lists); `encode_prefix` encodes `[user | history]` once into a
    `PrefixCache`, then `score_candidates` scores any number of candidates against it (serving).
    Both end in the one ranking head, `action_logits`.
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
        return self.action_logits(hidden[:, num_prefix:])

    def encode_prefix(self, batch: RecsysBatch, embeddings: RecsysEmbeddings) -> PrefixCache:
        """Run `[user | history]` once and keep every layer's keys and values.

        Reads only the user and history fields of `batch` and `embeddings` (the candidate fields
        may have any number of candidates, zero included).
        """
        check_inputs(batch, embeddings, self.config, needs_candidates=False)
        tokens, valid = self.embedding.prefix_tokens(batch, embeddings)
        positions = prefix_positions(valid, self.config.model.candidate_positions)
        return self.transformer.encode_prefix(tokens, positions, valid)

    def score_candidates(
        self,
        cache: PrefixCache,
        batch: RecsysBatch,
        embeddings: RecsysEmbeddings,
        *,
        offset: SupportsIndex | Int[Array, ""] = 0,
    ) -> Float[Array, "batch candidates actions"]:
        """Action logits (forward dtype) of the batch's candidates against a cached prefix.

        Equal to `__call__`'s logits for these candidates. With the seed's sequential positions
        candidate `i` sits at rotary position `prefix + offset + i`: pass the offset of this
        slice within the request's candidates to keep their original positions (a Python int
        compiles per value; an int32 scalar array does not). With shared positions every
        candidate sits at `prefix` and the offset has no effect.
        """
        config = self.config
        check_inputs(batch, embeddings, config, needs_candidates=True)
        expected = (
            self.transformer.num_layers,
            batch.user_hashes.shape[0],
            batch.history_post_hashes.shape[1] + 1,
        )
        actual = (cache.keys.shape[0], cache.keys.shape[1], cache.num_prefix)
        if actual != expected:
            raise ValueError(
                f"cache: expected (layers, batch, prefix) = {expected} from the model and "
                f"batch, got {actual}"
            )
        offset = _check_offset(offset)
        candidates, candidate_valid = self.embedding.candidate_tokens(batch, embeddings)
        batch_size, num_candidates = candidate_valid.shape
        positions = candidate_positions(
            batch_size, cache.num_prefix, num_candidates, config.model.candidate_positions, offset
        )
        hidden = self.transformer.score_candidates(
            candidates.astype(config.fprop_dtype), positions, candidate_valid, cache
        )
        return self.action_logits(hidden)

    def score_candidates_at_cuts(
        self,
        cache: PrefixCache,
        rows: Int[Array, " cuts"],
        lengths: Int[Array, " cuts"],
        batch: RecsysBatch,
        embeddings: RecsysEmbeddings,
    ) -> Float[Array, "cuts candidates actions"]:
        """Action logits of `batch`'s candidates (row `i`: cut `i`), each against cached prefix
        `rows[i]` cut to its first `lengths[i]` tokens (the user token and `lengths[i] - 1`
        history items): equal to `score_candidates` after encoding each cut prefix on its own.

        One prefix pass then serves many training positions of a sequence. It needs the causal
        history attention: a causal prefix's keys and values at a token depend only on the
        tokens up to it, so cutting the cache is encoding the shorter prefix. Rotary scores
        depend only on distances: with shared positions a cut's candidates sit right after
        its last kept token (the whole prefix's frame, shifted by the tokens cut off); with
        sequential ones where they always sit. `batch`'s user and history fields are unread
        beyond their shapes, which must give `len(rows)` rows and the cache's prefix.
        """
        config = self.config
        if config.model.history_attention != "causal":
            raise ValueError(
                "config.model.history_attention: expected 'causal' (a cut prefix must not "
                f"have seen later items), got {config.model.history_attention!r}"
            )
        if rows.ndim != 1 or lengths.shape != rows.shape:
            raise ValueError(
                f"lengths: expected the shape of rows {rows.shape}, got {lengths.shape}"
            )
        check_inputs(batch, embeddings, config, needs_candidates=True)
        if batch.user_hashes.shape[0] != rows.shape[0]:
            raise ValueError(
                f"batch: expected {rows.shape[0]} rows (one per cut), got "
                f"{batch.user_hashes.shape[0]}"
            )
        if batch.history_post_hashes.shape[1] + 1 != cache.num_prefix:
            raise ValueError(
                f"cache: expected a prefix of {batch.history_post_hashes.shape[1] + 1} tokens "
                f"(the batch's user and history), got {cache.num_prefix}"
            )
        num_prefixes = cache.keys.shape[1]
        rows = eqx.error_if(
            rows,
            (rows < 0) | (rows >= num_prefixes),
            f"rows: expected indices of the cache's {num_prefixes} prefixes",
        )
        lengths = eqx.error_if(
            lengths,
            (lengths < 1) | (lengths > cache.num_prefix),
            f"lengths: expected 1..{cache.num_prefix} tokens (the user token at least)",
        )
        whole_valid = cache.prefix_valid[rows]
        kept = whole_valid & (jnp.arange(cache.num_prefix) < lengths[:, None])
        cut = PrefixCache(keys=cache.keys[:, rows], values=cache.values[:, rows], prefix_valid=kept)
        candidates, candidate_valid = self.embedding.candidate_tokens(batch, embeddings)
        num_cuts, num_candidates = candidate_valid.shape
        positions = candidate_positions(
            num_cuts, cache.num_prefix, num_candidates, config.model.candidate_positions
        )
        if config.model.candidate_positions == "shared":
            tokens_cut_off = jnp.sum(whole_valid, axis=1) - jnp.sum(kept, axis=1)
            positions = positions - tokens_cut_off[:, None].astype(positions.dtype)
        hidden = self.transformer.score_candidates(
            candidates.astype(config.fprop_dtype), positions, candidate_valid, cut
        )
        return self.action_logits(hidden)

    def action_logits(
        self, candidate_hidden: Float[Array, "batch candidates emb"]
    ) -> Float[Array, "batch candidates actions"]:
        """The ranking head: final norm, then the unembedding in float32, in the forward dtype."""
        logits = jnp.dot(self.final_norm(candidate_hidden).astype(jnp.float32), self.unembedding)
        return logits.astype(self.config.fprop_dtype)

    def rank(self, batch: RecsysBatch, embeddings: RecsysEmbeddings) -> RankingOutput:
        """Probabilities (sigmoid of the logits) and candidates ranked by favorite probability."""
        logits = self(batch, embeddings)
        return ranking_output(logits, batch.candidate_valid)


def _check_offset(offset):
    """A non-negative candidate offset: a static integer checked now, or an integer scalar
    array (traced, so one compilation serves every offset) checked in-graph."""
    if not isinstance(offset, jax.Array):
        return static_int(offset, "offset", minimum=0)
    if offset.shape != () or not jnp.issubdtype(offset.dtype, jnp.integer):
        raise ValueError(f"offset: expected an integer scalar, got {offset.dtype}{offset.shape}")
    return eqx.error_if(offset, offset < 0, "offset: expected >= 0")


def ranking_output(
    logits: Float[Array, "batch candidates actions"],
    candidate_valid: Bool[Array, "batch candidates"],
) -> RankingOutput:
    """Probabilities and the ranked order: descending favorite probability, ties to the lower
    slot, a NaN score after every number, and invalid (padding) candidates after every valid
    one whatever their scores."""
    # The seed takes the sigmoid in the forward dtype; ranking on those values keeps its order.
    probabilities = jax.nn.sigmoid(logits)
    favorite = probabilities[..., 0].astype(jnp.float32)
    # Valid scores map into [-1, 0] (NaN to 1), invalid slots to 2: one stable sort does it all.
    sort_key = jnp.where(jnp.isnan(favorite), 1.0, -favorite)
    sort_key = jnp.where(candidate_valid, sort_key, 2.0)
    ranked = jnp.argsort(sort_key, axis=-1, stable=True).astype(jnp.int32)
    return RankingOutput(
        logits=logits.astype(jnp.float32),
        probabilities=probabilities.astype(jnp.float32),
        ranked_indices=ranked,
        candidate_valid=candidate_valid,
    )
