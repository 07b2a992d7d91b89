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
    """Dense-mask attention with grouped-query heads, without repeating K/V in memory."""
    batch, seq_len, num_q_heads, head_dim = q.shape
    num_kv_heads = k.shape[2]
    group = num_q_heads // num_kv_heads
    # Query head h reads kv head h // group: split the q heads as (kv_head, group).
    q_grouped = q.reshape(batch, seq_len, num_kv_heads, group, head_dim)
    logits = jnp.einsum("bthgd,bshd->bhgts", q_grouped, k).astype(jnp.float32)
    logits = apply_logit_cap(logits * scale, logit_cap, cap_method)

    allowed = candidate_isolation_mask(seq_len, num_prefix, history)[None]
    if key_valid is not None:
        allowed = allowed & key_valid[:, None, :]
    allowed = jnp.broadcast_to(allowed, (batch, seq_len, seq_len))
    logits = jnp.where(allowed[:, None, None], logits, MASKED_LOGIT)
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("bhgts,bshd->bthgd", weights, v)
    # A row with no allowed key would average every value; the contract says zeros.
    row_has_key = jnp.any(allowed, axis=-1)
    out = jnp.where(row_has_key[:, :, None, None, None], out, jnp.zeros((), out.dtype))
    return out.reshape(batch, seq_len, num_q_heads, head_dim)
