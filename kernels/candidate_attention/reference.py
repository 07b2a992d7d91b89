"""Pure-JAX candidate-isolation attention: the oracle every kernel is tested against.

The arithmetic follows the original Phoenix (Grok-1) attention step by step, so that the
seed-compatible model reproduces the original's numbers: logits are formed in the input dtype
(bf16 rounding happens there), then scaled, capped, masked and soft-maxed in float32; the weights
are cast back to the input dtype before they multiply the values.
"""

from typing import Literal

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

HistoryMode = Literal["causal", "bidirectional"]
CapMethod = Literal["tanh", "soft_sign"]

# The original masks with -1e30 rather than -inf, so a fully masked row stays finite.
MASKED_LOGIT = -1e30


def candidate_isolation_mask(
    seq_len: int, num_prefix: int, history: HistoryMode = "causal"
) -> Bool[Array, "seq seq"]:
    """Structural mask, `mask[i, j]` true where query `i` may attend key `j`.

    Queries in the prefix (user + history, `i < num_prefix`) see prefix keys: all of them when
    `history="bidirectional"`, those with `j <= i` when `"causal"`. Candidate queries
    (`i >= num_prefix`) see every prefix key and themselves, never another candidate.
    """
    query = jnp.arange(seq_len)[:, None]
    key = jnp.arange(seq_len)[None, :]
    key_in_prefix = key < num_prefix
    if history == "causal":
        prefix_rows = key_in_prefix & (key <= query)
    else:
        prefix_rows = key_in_prefix
    candidate_rows = key_in_prefix | (key == query)
    return jnp.where(query < num_prefix, prefix_rows, candidate_rows)


def apply_logit_cap(
    logits: Float[Array, "*shape"], logit_cap: float | None, cap_method: CapMethod
) -> Float[Array, "*shape"]:
    """Soft-cap logits to (-cap, cap): `cap*tanh(x/cap)` or the soft sign `x/(1+|x|/cap)`."""
    if logit_cap is None:
        return logits
    if cap_method == "tanh":
        return logit_cap * jnp.tanh(logits / logit_cap)
    return logits / (1.0 + jnp.abs(logits) / logit_cap)


def zero_invalid_keys(
    k: Float[Array, "batch seq kv_heads head_dim"],
    v: Float[Array, "batch seq kv_heads head_dim"],
    key_valid: Bool[Array, "batch seq"] | None,
) -> tuple[
    Float[Array, "batch seq kv_heads head_dim"], Float[Array, "batch seq kv_heads head_dim"]
]:
    """Keys and values with every invalid position set to zero (a select, not a product).

    A masked key's weight is exactly 0, but `0 * NaN` is NaN: selecting zeros first makes an
    invalid position contribute nothing whatever it holds, forward and backward.
    """
    if key_valid is None:
        return k, v
    keep = key_valid[:, :, None, None]
    return jnp.where(keep, k, jnp.zeros((), k.dtype)), jnp.where(keep, v, jnp.zeros((), v.dtype))


def candidate_attention_reference(
    q: Float[Array, "batch seq q_heads head_dim"],
    k: Float[Array, "batch seq kv_heads head_dim"],
    v: Float[Array, "batch seq kv_heads head_dim"],
    *,
    num_prefix: int,
    key_valid: Bool[Array, "batch seq"] | None,
    history: HistoryMode,
    scale: float,
    logit_cap: float | None,
    cap_method: CapMethod,
) -> Float[Array, "batch seq q_heads head_dim"]:
    """Grouped-query attention with the candidate-isolation mask, computed along its structure:
    prefix rows against the prefix keys, candidate rows against the prefix keys and their own
    (`cached_candidate_attention_reference`). No [candidates, candidates] block is formed, so a
    candidate's keys and values never enter another candidate's sums, even as `0 * NaN`.
    """
    batch, seq_len = q.shape[:2]
    if key_valid is None:
        key_valid = jnp.ones((batch, seq_len), bool)
    options = dict(scale=scale, logit_cap=logit_cap, cap_method=cap_method)
    prefix = slice(0, num_prefix)
    parts = []
    if num_prefix:
        allowed = candidate_isolation_mask(num_prefix, num_prefix, history)[None]
        parts.append(
            _prefix_rows(
                q[:, prefix], k[:, prefix], v[:, prefix], allowed, key_valid[:, prefix], **options
            )
        )
    if num_prefix < seq_len:
        candidates = slice(num_prefix, seq_len)
        parts.append(
            cached_candidate_attention_reference(
                q[:, candidates],
                k[:, candidates],
                v[:, candidates],
                k[:, prefix],
                v[:, prefix],
                prefix_valid=key_valid[:, prefix],
                candidate_valid=key_valid[:, candidates],
                **options,
            )
        )
    return jnp.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]


def _prefix_rows(
    q: Float[Array, "batch prefix q_heads head_dim"],
    k: Float[Array, "batch prefix kv_heads head_dim"],
    v: Float[Array, "batch prefix kv_heads head_dim"],
    structure: Bool[Array, "1 prefix prefix"],
    key_valid: Bool[Array, "batch prefix"],
    *,
    scale: float,
    logit_cap: float | None,
    cap_method: CapMethod,
) -> Float[Array, "batch prefix q_heads head_dim"]:
    """Dense-mask attention of the prefix rows, without repeating K/V in memory."""
    batch, num_prefix, num_q_heads, head_dim = q.shape
    num_kv_heads = k.shape[2]
    group = num_q_heads // num_kv_heads
    k, v = zero_invalid_keys(k, v, key_valid)
    # Query head h reads kv head h // group: split the q heads as (kv_head, group).
    q_grouped = q.reshape(batch, num_prefix, num_kv_heads, group, head_dim)
    logits = jnp.einsum("bthgd,bshd->bhgts", q_grouped, k).astype(jnp.float32)
    logits = apply_logit_cap(logits * scale, logit_cap, cap_method)
    allowed = jnp.broadcast_to(structure & key_valid[:, None, :], (batch, num_prefix, num_prefix))
    logits = jnp.where(allowed[:, None, None], logits, MASKED_LOGIT)
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("bhgts,bshd->bthgd", weights, v)
    # A row with no allowed key would average every value; the contract says zeros.
    row_has_key = jnp.any(allowed, axis=-1)
    out = jnp.where(row_has_key[:, :, None, None, None], out, jnp.zeros((), out.dtype))
    return out.reshape(batch, num_prefix, num_q_heads, head_dim)


def cached_candidate_attention_reference(
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
    cap_method: CapMethod,
) -> Float[Array, "batch candidates q_heads head_dim"]:
    """The candidate rows of `candidate_attention_reference` given the prefix's keys and values.

    Each candidate attends the valid prefix keys and, if valid, its own key; never another
    candidate, so no [candidates, candidates] matrix is formed: O(candidates x prefix). The
    arithmetic is the full reference's (logits in the input dtype, cap and softmax in float32,
    the prefix and self parts summed in float32 as one einsum over `[prefix | self]` would).
    """
    batch, num_candidates, num_q_heads, head_dim = q.shape
    num_kv_heads = k.shape[2]
    group = num_q_heads // num_kv_heads
    num_prefix = prefix_keys.shape[1]
    prefix_keys, prefix_values = zero_invalid_keys(prefix_keys, prefix_values, prefix_valid)
    k, v = zero_invalid_keys(k, v, candidate_valid)
    q_grouped = q.reshape(batch, num_candidates, num_kv_heads, group, head_dim)
    prefix_logits = jnp.einsum("bchgd,bphd->bhgcp", q_grouped, prefix_keys).astype(jnp.float32)
    self_logits = jnp.einsum("bchgd,bchd->bhgc", q_grouped, k).astype(jnp.float32)
    logits = jnp.concatenate([prefix_logits, self_logits[..., None]], axis=-1)
    logits = apply_logit_cap(logits * scale, logit_cap, cap_method)
    allowed = jnp.concatenate(
        [
            jnp.broadcast_to(prefix_valid[:, None, :], (batch, num_candidates, num_prefix)),
            candidate_valid[:, :, None],
        ],
        axis=-1,
    )
    logits = jnp.where(allowed[:, None, None], logits, MASKED_LOGIT)
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
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
