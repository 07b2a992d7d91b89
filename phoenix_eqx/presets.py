"""X's production Phoenix configuration as presets, at full and at test scale
(docs/seed-compatibility.md).

The production options, each of which the seed-compatible defaults leave off:

- `history_attention="bidirectional"`: user + history attend each other both ways; candidates
  still see the whole prefix and themselves only.
- `candidate_positions="shared"`: the valid history is right-aligned and every candidate sits at
  the one position after it, so a score does not depend on the candidate's slot or on how much
  padding the history carries.
- `qk_norm=True` with `logit_cap=None`: RMSNorm over the concatenated q (and k) heads before
  rotary bounds the logits, so the cap is off.
- Grouped-query heads (ranker 20 q / 4 kv, retrieval 16 / 4) with key size 128.

Sizes the original leaves open are choices of this module: the widening factor (2, as in the
seed's demo), the logit scale (`1/sqrt(key_size)`, which is the demo's 0.125 at key 64), and
the retrieval tower's depth (8 layers, as the ranker).
"""

import jax.numpy as jnp

from .config import (
    PhoenixModelConfig,
    PhoenixRetrievalModelConfig,
    TransformerConfig,
    transformer_config,
)

PRODUCTION_OPTIONS = dict(
    history_attention="bidirectional",
    candidate_positions="shared",
    qk_norm=True,
    logit_cap=None,
)
PRODUCTION_HISTORY = 1023
PRODUCTION_SERVING_CANDIDATES = 1400
PRODUCTION_TRAINING_CANDIDATES = 64


def production_transformer_config(
    emb_size: int,
    num_q_heads: int,
    num_kv_heads: int,
    num_layers: int,
    key_size: int = 128,
    **overrides,
) -> TransformerConfig:
    """A transformer with every production option on; `overrides` replace any field."""
    return transformer_config(
        emb_size,
        key_size,
        num_q_heads,
        num_kv_heads,
        num_layers,
        **{**PRODUCTION_OPTIONS, **overrides},
    )


def _transformer(
    emb_size: int,
    num_q_heads: int,
    num_kv_heads: int,
    num_layers: int,
    key_size: int,
    overrides: dict,
) -> TransformerConfig:
    """A preset's sizes, any of which (or any option) `overrides` replaces."""
    sizes = dict(
        emb_size=emb_size,
        num_q_heads=num_q_heads,
        num_kv_heads=num_kv_heads,
        num_layers=num_layers,
        key_size=key_size,
    )
    return production_transformer_config(**{**sizes, **overrides})


def production_ranker_config(
    *,
    history_seq_len: int = PRODUCTION_HISTORY,
    candidate_seq_len: int = PRODUCTION_SERVING_CANDIDATES,
    fprop_dtype=jnp.bfloat16,
    **transformer_overrides,
) -> PhoenixModelConfig:
    """X's production ranker: emb 2560, 8 layers, 20 q / 4 kv heads of 128, history 1023,
    1400 candidates at serving (train with `candidate_seq_len=64`)."""
    return PhoenixModelConfig(
        model=_transformer(2560, 20, 4, 8, 128, transformer_overrides),
        emb_size=2560,
        history_seq_len=history_seq_len,
        candidate_seq_len=candidate_seq_len,
        fprop_dtype=fprop_dtype,
    )


def production_retrieval_config(
    *,
    history_seq_len: int = PRODUCTION_HISTORY,
    fprop_dtype=jnp.bfloat16,
    **transformer_overrides,
) -> PhoenixRetrievalModelConfig:
    """X's production retrieval user tower: emb 1024, 8 layers, 16 q / 4 kv heads of 128,
    history 1023."""
    return PhoenixRetrievalModelConfig(
        model=_transformer(1024, 16, 4, 8, 128, transformer_overrides),
        emb_size=1024,
        history_seq_len=history_seq_len,
        fprop_dtype=fprop_dtype,
    )


def small_production_ranker_config(
    *,
    history_seq_len: int = 16,
    candidate_seq_len: int = 8,
    fprop_dtype=jnp.float32,
    **transformer_overrides,
) -> PhoenixModelConfig:
    """The production ranker's options at test scale: emb 40, 2 layers, 5 q / 1 kv heads of 8
    (the production 5:1 head ratio)."""
    return PhoenixModelConfig(
        model=_transformer(40, 5, 1, 2, 8, transformer_overrides),
        emb_size=40,
        history_seq_len=history_seq_len,
        candidate_seq_len=candidate_seq_len,
        fprop_dtype=fprop_dtype,
        product_surface_vocab_size=4,
    )


def small_production_retrieval_config(
    *, history_seq_len: int = 16, fprop_dtype=jnp.float32, **transformer_overrides
) -> PhoenixRetrievalModelConfig:
    """The production retrieval tower's options at test scale: emb 32, 2 layers, 4 q / 1 kv
    heads of 8 (the production 4:1 head ratio)."""
    return PhoenixRetrievalModelConfig(
        model=_transformer(32, 4, 1, 2, 8, transformer_overrides),
        emb_size=32,
        history_seq_len=history_seq_len,
        fprop_dtype=fprop_dtype,
        product_surface_vocab_size=4,
    )
