"""Serving the ranker at scale: encode user + history once, score candidates in chunks.

Candidate isolation makes this exact: at every layer a candidate attends only the prefix's keys
and values at that layer and its own, so the prefix's per-layer K/V (a `PrefixCache`) is all a
candidate needs from the rest of the sequence. `encode_prefix` builds the cache once per
request; `score_candidates` runs any number of candidates against it; `rank_chunked` does both
and loops over fixed-size chunks, so memory stays bounded whatever the number of candidates.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from .inputs import RankingOutput, RecsysBatch, RecsysEmbeddings, check_inputs
from .kernels.candidate_attention.reference import MASKED_LOGIT, apply_logit_cap
from .ranker import PhoenixModel, ranking_output
from .transformer import token_positions

CANDIDATE_FIELDS = ("candidate_post_hashes", "candidate_author_hashes", "candidate_product_surface")
CANDIDATE_EMBEDDINGS = ("candidate_post_embeddings", "candidate_author_embeddings")


class PrefixCache(eqx.Module):
    """Every layer's keys (rotary applied) and values of a batch's `[user | history]` prefix.

    `prefix_valid` is the prefix's padding mask: invalid keys are never attended.
    """

    keys: Float[Array, "layers batch prefix kv_heads head_dim"]
    values: Float[Array, "layers batch prefix kv_heads head_dim"]
    prefix_valid: Bool[Array, "batch prefix"]

    @property
    def num_prefix(self) -> int:
        return self.prefix_valid.shape[1]


def cached_candidate_attention(
    q: Float[Array, "batch candidates q_heads head_dim"],
    k: Float[Array, "batch candidates kv_heads head_dim"],
    v: Float[Array, "batch candidates kv_heads head_dim"],
    prefix_keys: Float[Array, "batch prefix kv_heads head_dim"],
    prefix_values: Float[Array, "batch prefix kv_heads head_dim"],
    *,
    prefix_valid: Bool[Array, "batch prefix"],
    candidate_valid: Bool[Array, "batch candidates"],
    scale: float,
    logit_cap: float | None,
    cap_method: str,
) -> Float[Array, "batch candidates q_heads head_dim"]:
    """Candidate rows of `candidate_attention`, against a cached prefix: O(candidates x prefix).

    Each candidate attends the valid prefix keys and, if valid, its own key; never another
    candidate, so no [candidates, candidates] matrix is formed. The arithmetic is the
    reference's (logits in the input dtype, cap and softmax in float32); a row with no allowed
    key outputs zeros.
    """
    batch, num_candidates, num_q_heads, head_dim = q.shape
    num_kv_heads = k.shape[2]
    group = num_q_heads // num_kv_heads
    q_grouped = q.reshape(batch, num_candidates, num_kv_heads, group, head_dim)
    prefix_logits = jnp.einsum("bchgd,bphd->bhgcp", q_grouped, prefix_keys).astype(jnp.float32)
    self_logits = jnp.einsum("bchgd,bchd->bhgc", q_grouped, k).astype(jnp.float32)
    logits = jnp.concatenate([prefix_logits, self_logits[..., None]], axis=-1)
    logits = apply_logit_cap(logits * scale, logit_cap, cap_method)
    num_prefix = prefix_keys.shape[1]
    allowed = jnp.concatenate(
        [
            jnp.broadcast_to(prefix_valid[:, None, :], (batch, num_candidates, num_prefix)),
            candidate_valid[:, :, None],
        ],
        axis=-1,
    )
    logits = jnp.where(allowed[:, None, None], logits, MASKED_LOGIT)
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    # Sum the prefix and self parts in float32, as one einsum over [prefix | self] would.
    out = jnp.einsum(
        "bhgcp,bphd->bchgd",
        weights[..., :num_prefix],
        prefix_values,
        preferred_element_type=jnp.float32,
    )
    self_weights = jnp.transpose(weights[..., num_prefix], (0, 3, 1, 2))
    out = out + (self_weights[..., None] * v[:, :, :, None, :]).astype(jnp.float32)
    row_has_key = jnp.any(allowed, axis=-1)
    out = jnp.where(row_has_key[:, :, None, None, None], out, 0.0).astype(v.dtype)
    return out.reshape(batch, num_candidates, num_q_heads, head_dim)


@eqx.filter_jit
def encode_prefix(
    model: PhoenixModel, batch: RecsysBatch, embeddings: RecsysEmbeddings
) -> PrefixCache:
    """Run `[user | history]` through the ranker once and keep each layer's keys and values.

    The prefix's rows never attend candidates, so this is exactly the prefix part of the
    one-shot forward. Only the user and history fields of `batch`/`embeddings` are read.
    """
    check_inputs(batch, embeddings, model.config, needs_candidates=True)
    config = model.config.model
    tokens, valid = model.embedding.prefix_tokens(batch, embeddings)
    num_prefix = tokens.shape[1]
    positions = token_positions(valid, 0, config.candidate_positions)
    params, static = eqx.partition(model.transformer.layers, eqx.is_array)

    def step(h, layer_params):
        layer = eqx.combine(layer_params, static)
        q, k, v = layer.attention.project(layer.pre_attention_norm(h), positions)
        attended = layer.attention.attend(q, k, v, valid, num_prefix)
        h = layer.after_attention(h, attended)
        return h, (k, v)

    # The last layer's prefix outputs feed nothing: only its keys and values are computed.
    h, (keys, values) = jax.lax.scan(step, tokens, jax.tree.map(lambda x: x[:-1], params))
    last = eqx.combine(jax.tree.map(lambda x: x[-1], params), static)
    _, k, v = last.attention.project(last.pre_attention_norm(h), positions)
    return PrefixCache(
        keys=jnp.concatenate([keys, k[None]]),
        values=jnp.concatenate([values, v[None]]),
        prefix_valid=valid,
    )


@eqx.filter_jit
def score_candidates(
    model: PhoenixModel,
    cache: PrefixCache,
    batch: RecsysBatch,
    embeddings: RecsysEmbeddings,
    *,
    candidate_offset: int | Int[Array, ""] = 0,
) -> Float[Array, "batch candidates actions"]:
    """Action logits (forward dtype) of the batch's candidates against a cached prefix.

    Equal to the one-shot forward's logits for these candidates. With the seed's sequential
    positions candidate `i` sits at rotary position `prefix + candidate_offset + i`: pass the
    offset of this slice within the request to keep its original positions (a Python int
    compiles per value; an int32 scalar array does not). With shared positions every candidate
    sits at `prefix` and the offset has no effect.
    """
    check_inputs(batch, embeddings, model.config, needs_candidates=True)
    config = model.config
    num_layers = model.transformer.num_layers
    expected = (num_layers, batch.user_hashes.shape[0], batch.history_post_hashes.shape[1] + 1)
    actual = (cache.keys.shape[0], cache.keys.shape[1], cache.num_prefix)
    if actual != expected:
        raise ValueError(
            f"cache: expected (layers, batch, prefix) = {expected} from the model and batch, "
            f"got {actual}"
        )
    candidates, candidate_valid = model.embedding.candidate_tokens(batch, embeddings)
    candidates = candidates.astype(config.fprop_dtype)
    batch_size, num_candidates = candidate_valid.shape
    if config.model.candidate_positions == "shared":
        positions = jnp.full((batch_size, num_candidates), cache.num_prefix, jnp.float32)
    else:
        start = cache.num_prefix + candidate_offset
        positions = start + jnp.arange(num_candidates, dtype=jnp.float32)
        positions = jnp.broadcast_to(positions, (batch_size, num_candidates))
    params, static = eqx.partition(model.transformer.layers, eqx.is_array)
    attention_config = config.model

    def step(h, layer_inputs):
        layer_params, prefix_keys, prefix_values = layer_inputs
        layer = eqx.combine(layer_params, static)
        q, k, v = layer.attention.project(layer.pre_attention_norm(h), positions)
        attended = cached_candidate_attention(
            q,
            k,
            v,
            prefix_keys,
            prefix_values,
            prefix_valid=cache.prefix_valid,
            candidate_valid=candidate_valid,
            scale=attention_config.attn_output_multiplier,
            logit_cap=attention_config.logit_cap,
            cap_method=attention_config.cap_method,
        )
        return layer.after_attention(h, layer.attention.merge_heads(attended)), None

    hidden, _ = jax.lax.scan(step, candidates, (params, cache.keys, cache.values))
    logits = jnp.dot(model.final_norm(hidden).astype(jnp.float32), model.unembedding)
    return logits.astype(config.fprop_dtype)


def _check_chunk(candidate_chunk: int) -> None:
    if isinstance(candidate_chunk, bool) or not isinstance(candidate_chunk, int):
        raise ValueError(f"candidate_chunk: expected a positive int, got {candidate_chunk!r}")
    if candidate_chunk < 1:
        raise ValueError(f"candidate_chunk: expected a positive int, got {candidate_chunk}")


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
    candidate_chunk: int,
) -> Float[Array, "batch candidates actions"]:
    """`score_candidates` over all candidates, `candidate_chunk` at a time, in a loop.

    Working memory is that of one chunk (plus the [batch, candidates, actions] result): the
    loop slices each chunk out of the inputs and writes its logits into the result in place.
    When the count is not a multiple of the chunk, the last chunk is shifted back to end at the
    last candidate (re-scoring a few, which gives the same values): every chunk has one shape.
    """
    _check_chunk(candidate_chunk)
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
        logits = score_candidates(
            model, cache, chunk_batch, chunk_embeddings, candidate_offset=start
        )
        return jax.lax.dynamic_update_slice_in_dim(result, logits, start, axis=1)

    return jax.lax.fori_loop(0, num_chunks, body, result)


@eqx.filter_jit
def rank_chunked(
    model: PhoenixModel,
    batch: RecsysBatch,
    embeddings: RecsysEmbeddings,
    *,
    candidate_chunk: int = 512,
) -> RankingOutput:
    """`inference.rank` for any number of candidates in bounded memory.

    Encodes each user's prefix once, then scores the candidates `candidate_chunk` at a time
    against the cache. Results equal the one-shot `rank` (to float rounding).
    """
    _check_chunk(candidate_chunk)
    cache = encode_prefix(model, batch, embeddings)
    logits = candidate_logits_chunked(
        model, cache, batch, embeddings, candidate_chunk=candidate_chunk
    )
    return ranking_output(logits, batch.candidate_valid)
