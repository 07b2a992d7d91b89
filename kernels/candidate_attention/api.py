"""Public entry points of the candidate-isolation attention ops: contracts, checks, dispatch.

`candidate_attention` is the whole sequence `[prefix | candidates]` at once (training, short
candidate lists); `cached_candidate_attention` is its candidate rows given the prefix's keys and
values (serving: the prefix is encoded once, then any number of candidates attend it).
"""

from typing import SupportsIndex

import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from ..dispatch import Implementation, static_int, use_pallas
from .reference import (
    CapMethod,
    HistoryMode,
    cached_candidate_attention_reference,
    candidate_attention_reference,
)

KERNEL_DTYPES = (jnp.bfloat16, jnp.float16)
KERNEL_HEAD_DIMS = (64, 128)


def _check_heads(q, k, v, names: tuple[str, str, str]) -> None:
    """q `[batch, rows, q_heads, d]`, k and v `[batch, rows, kv_heads, d]`, one float dtype."""
    q_name, k_name, v_name = names
    if q.ndim != 4:
        raise ValueError(f"{q_name}: expected [batch, seq, q_heads, head_dim], got {q.shape}")
    batch, rows, num_q_heads, head_dim = q.shape
    if batch == 0 or rows == 0:
        raise ValueError(f"{q_name}: expected a non-empty batch and sequence, got {q.shape}")
    for name, array in ((k_name, k), (v_name, v)):
        if array.ndim != 4 or array.shape[:2] != (batch, rows) or array.shape[3] != head_dim:
            raise ValueError(
                f"{name}: expected [{batch}, {rows}, kv_heads, {head_dim}] to match {q_name}, "
                f"got shape {array.shape}"
            )
    if k.shape != v.shape:
        raise ValueError(f"{v_name}: expected the shape of {k_name} {k.shape}, got {v.shape}")
    num_kv_heads = k.shape[2]
    if num_kv_heads == 0 or num_q_heads % num_kv_heads:
        raise ValueError(
            f"{k_name}: expected a kv head count dividing the {num_q_heads} q heads, "
            f"got {num_kv_heads}"
        )
    if not (q.dtype == k.dtype == v.dtype) or not jnp.issubdtype(q.dtype, jnp.floating):
        raise ValueError(
            f"{q_name}, {k_name}, {v_name}: expected one floating dtype, "
            f"got {q.dtype}, {k.dtype}, {v.dtype}"
        )


def _check_mask(mask, shape: tuple[int, int], name: str) -> None:
    if mask is not None and (mask.shape != shape or mask.dtype != bool):
        raise ValueError(
            f"{name}: expected bool [{shape[0]}, {shape[1]}], got {mask.dtype} {mask.shape}"
        )


def _attention_options(scale, logit_cap, cap_method) -> dict:
    """The logit options shared by both ops, checked and as the kernels take them."""
    if cap_method not in ("tanh", "soft_sign"):
        raise ValueError(f"cap_method: expected 'tanh' or 'soft_sign', got {cap_method!r}")
    if logit_cap is not None and not logit_cap > 0:
        raise ValueError(f"logit_cap: expected a positive float or None, got {logit_cap}")
    return dict(
        scale=float(scale),
        logit_cap=None if logit_cap is None else float(logit_cap),
        cap_method=cap_method,
    )


def _kernel_unsupported(q) -> str | None:
    """Why the Mosaic GPU kernel cannot take `q` (None if it can)."""
    if q.dtype not in KERNEL_DTYPES or q.shape[-1] not in KERNEL_HEAD_DIMS:
        return (
            f"q: expected bfloat16 or float16 with head_dim in {KERNEL_HEAD_DIMS}, "
            f"got {q.dtype} with head_dim {q.shape[-1]}"
        )
    return None


def candidate_attention(
    q: Float[Array, "batch seq q_heads head_dim"],
    k: Float[Array, "batch seq kv_heads head_dim"],
    v: Float[Array, "batch seq kv_heads head_dim"],
    *,
    num_prefix: SupportsIndex,
    key_valid: Bool[Array, "batch seq"] | None = None,
    history: HistoryMode = "causal",
    scale: float = 1.0,
    logit_cap: float | None = None,
    cap_method: CapMethod = "tanh",
    implementation: Implementation = "auto",
    interpret: bool = False,
) -> Float[Array, "batch seq q_heads head_dim"]:
    """Attention with candidate isolation, the mask of the Phoenix ranker.

    The sequence is a prefix of `num_prefix` tokens (user + history) followed by candidates.
    A prefix query attends prefix keys (`j <= i` when `history="causal"`, all of them when
    `"bidirectional"`); a candidate query attends every prefix key and itself, never another
    candidate. Keys with `key_valid` false are never attended and contribute nothing, also when
    they hold NaN or inf; a query with no allowed key outputs zeros. Logits are `q.k * scale`,
    then soft-capped when `logit_cap` is set (`"tanh"`: `cap*tanh(x/cap)`, `"soft_sign"`:
    `x/(1+|x|/cap)`). Query head `h` reads key/value head `h // (q_heads // kv_heads)`.

    `implementation` (see `Implementation`): `"xla"` runs the pure-JAX reference; `"pallas"`
    the fused Mosaic GPU kernel (Hopper, bf16/f16, head_dim 64 or 128; other inputs raise
    `NotImplementedError`); `"auto"` the kernel on a Hopper GPU for such inputs, else the
    reference. `interpret=True` runs the kernel in Mosaic GPU's CPU interpreter.
    """
    _check_heads(q, k, v, ("q", "k", "v"))
    batch, seq_len = q.shape[:2]
    num_prefix = static_int(num_prefix, "num_prefix", minimum=0, maximum=seq_len)
    _check_mask(key_valid, (batch, seq_len), "key_valid")
    if history not in ("causal", "bidirectional"):
        raise ValueError(f"history: expected 'causal' or 'bidirectional', got {history!r}")
    options = dict(
        num_prefix=num_prefix,
        key_valid=key_valid,
        history=history,
        **_attention_options(scale, logit_cap, cap_method),
    )
    if use_pallas(implementation, interpret, _kernel_unsupported(q), "candidate_attention"):
        from .mosaic_gpu import candidate_attention_pallas

        return candidate_attention_pallas(q, k, v, interpret=interpret, **options)
    return candidate_attention_reference(q, k, v, **options)


def cached_candidate_attention(
    q: Float[Array, "batch candidates q_heads head_dim"],
    k: Float[Array, "batch candidates kv_heads head_dim"],
    v: Float[Array, "batch candidates kv_heads head_dim"],
    prefix_keys: Float[Array, "batch prefix kv_heads head_dim"],
    prefix_values: Float[Array, "batch prefix kv_heads head_dim"],
    *,
    prefix_valid: Bool[Array, "batch prefix"],
    candidate_valid: Bool[Array, "batch candidates"],
    scale: float = 1.0,
    logit_cap: float | None = None,
    cap_method: CapMethod = "tanh",
    implementation: Implementation = "auto",
    interpret: bool = False,
) -> Float[Array, "batch candidates q_heads head_dim"]:
    """The candidate rows of `candidate_attention` on `[prefix | candidates]`, given the
    prefix's keys and values (rotary already applied) instead of the whole sequence.

    `q, k, v` are the candidates' own projections; each candidate attends the valid prefix keys
    and, if valid, its own key. Invalid keys contribute nothing, also when they hold NaN.
    Equal to `candidate_attention(concat(prefix, candidates))[:, prefix:]` with
    `key_valid = concat(prefix_valid, candidate_valid)` and `num_prefix = prefix`, whatever the
    history mode (prefix rows are not computed here).

    `"pallas"` runs the same Mosaic GPU kernel over `[prefix | candidates]` with zero prefix
    queries and keeps the candidate rows: the extra work is the prefix's own rows, small when
    the candidates outnumber the prefix, as in serving.
    """
    _check_heads(q, k, v, ("q", "k", "v"))
    _check_heads(prefix_keys, prefix_keys, prefix_values, ("prefix_keys",) * 2 + ("prefix_values",))
    batch, num_candidates = q.shape[:2]
    num_prefix = prefix_keys.shape[1]
    if prefix_keys.shape[0] != batch or prefix_keys.shape[2:] != k.shape[2:]:
        raise ValueError(
            f"prefix_keys: expected [{batch}, prefix, {k.shape[2]}, {k.shape[3]}] to match k, "
            f"got {prefix_keys.shape}"
        )
    if prefix_keys.dtype != q.dtype:
        raise ValueError(f"prefix_keys: expected dtype {q.dtype} like q, got {prefix_keys.dtype}")
    if prefix_valid is None or candidate_valid is None:
        raise ValueError("prefix_valid, candidate_valid: expected bool masks, got None")
    _check_mask(prefix_valid, (batch, num_prefix), "prefix_valid")
    _check_mask(candidate_valid, (batch, num_candidates), "candidate_valid")
    options = _attention_options(scale, logit_cap, cap_method)
    if use_pallas(implementation, interpret, _kernel_unsupported(q), "cached_candidate_attention"):
        from .mosaic_gpu import candidate_attention_pallas

        prefix_queries = jnp.zeros((batch, num_prefix, *q.shape[2:]), q.dtype)
        out = candidate_attention_pallas(
            jnp.concatenate([prefix_queries, q], axis=1),
            jnp.concatenate([prefix_keys, k], axis=1),
            jnp.concatenate([prefix_values, v], axis=1),
            interpret=interpret,
            num_prefix=num_prefix,
            key_valid=jnp.concatenate([prefix_valid, candidate_valid], axis=1),
            history="causal",  # the cheaper mask for the prefix rows, which are discarded
            **options,
        )
        return out[:, num_prefix:]
    return cached_candidate_attention_reference(
        q,
        k,
        v,
        prefix_keys,
        prefix_values,
        prefix_valid=prefix_valid,
        candidate_valid=candidate_valid,
        **options,
    )
