"""Public entry point of the candidate-isolation attention op: contract, checks and dispatch."""

import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from .._dispatch import Implementation, use_pallas
from .reference import CapMethod, HistoryMode, candidate_attention_reference

KERNEL_DTYPES = (jnp.bfloat16, jnp.float16)
KERNEL_HEAD_DIMS = (64, 128)


def _check_inputs(q, k, v, num_prefix, key_valid, history, logit_cap, cap_method) -> None:
    if q.ndim != 4:
        raise ValueError(f"q: expected [batch, seq, q_heads, head_dim], got shape {q.shape}")
    batch, seq_len, num_q_heads, head_dim = q.shape
    if batch == 0 or seq_len == 0:
        raise ValueError(f"q: expected a non-empty batch and sequence, got shape {q.shape}")
    for name, array in (("k", k), ("v", v)):
        if array.ndim != 4 or array.shape[:2] != (batch, seq_len) or array.shape[3] != head_dim:
            raise ValueError(
                f"{name}: expected [{batch}, {seq_len}, kv_heads, {head_dim}] to match q, "
                f"got shape {array.shape}"
            )
    if k.shape != v.shape:
        raise ValueError(f"v: expected the shape of k {k.shape}, got {v.shape}")
    num_kv_heads = k.shape[2]
    if num_kv_heads == 0 or num_q_heads % num_kv_heads:
        raise ValueError(
            f"k: expected a kv head count dividing the {num_q_heads} q heads, got {num_kv_heads}"
        )
    if not (q.dtype == k.dtype == v.dtype) or not jnp.issubdtype(q.dtype, jnp.floating):
        raise ValueError(
            f"q, k, v: expected one floating dtype, got {q.dtype}, {k.dtype}, {v.dtype}"
        )
    if not 0 <= num_prefix <= seq_len:
        raise ValueError(f"num_prefix: expected 0 <= num_prefix <= {seq_len}, got {num_prefix}")
    if key_valid is not None and (key_valid.shape != (batch, seq_len) or key_valid.dtype != bool):
        raise ValueError(
            f"key_valid: expected bool [{batch}, {seq_len}], "
            f"got {key_valid.dtype} {key_valid.shape}"
        )
    if history not in ("causal", "bidirectional"):
        raise ValueError(f"history: expected 'causal' or 'bidirectional', got {history!r}")
    if cap_method not in ("tanh", "soft_sign"):
        raise ValueError(f"cap_method: expected 'tanh' or 'soft_sign', got {cap_method!r}")
    if logit_cap is not None and not logit_cap > 0:
        raise ValueError(f"logit_cap: expected a positive float or None, got {logit_cap}")


def candidate_attention(
    q: Float[Array, "batch seq q_heads head_dim"],
    k: Float[Array, "batch seq kv_heads head_dim"],
    v: Float[Array, "batch seq kv_heads head_dim"],
    *,
    num_prefix: int,
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
    candidate. Keys with `key_valid` false are never attended, and a query with no allowed key
    outputs zeros. Logits are `q.k * scale`, then soft-capped when `logit_cap` is set
    (`"tanh"`: `cap*tanh(x/cap)`, `"soft_sign"`: `x/(1+|x|/cap)`). Query head `h` reads key/value
    head `h // (q_heads // kv_heads)`.

    `implementation`: `"xla"` runs the pure-JAX reference; `"pallas"` the fused Mosaic GPU
    kernel (Hopper, bf16/f16, head_dim 64 or 128); `"auto"` picks the kernel on a Hopper GPU for
    such inputs and the reference elsewhere. `interpret=True` runs the kernel in Mosaic GPU's
    CPU interpreter.
    """
    _check_inputs(q, k, v, num_prefix, key_valid, history, logit_cap, cap_method)
    options = dict(
        num_prefix=num_prefix,
        key_valid=key_valid,
        history=history,
        scale=float(scale),
        logit_cap=None if logit_cap is None else float(logit_cap),
        cap_method=cap_method,
    )
    unsupported = None
    if q.dtype not in KERNEL_DTYPES or q.shape[-1] not in KERNEL_HEAD_DIMS:
        unsupported = (
            f"q: expected bfloat16 or float16 with head_dim in {KERNEL_HEAD_DIMS}, "
            f"got {q.dtype} with head_dim {q.shape[-1]}"
        )
    if use_pallas(implementation, interpret, unsupported, "candidate_attention"):
        from .mosaic_gpu import candidate_attention_pallas

        return candidate_attention_pallas(q, k, v, interpret=interpret, **options)
    return candidate_attention_reference(q, k, v, **options)
