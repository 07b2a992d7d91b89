"""Model configurations: the seed's dataclasses, frozen, plus X's production options."""

import dataclasses
from typing import Literal

import jax.numpy as jnp

# The 19 engagement actions, in the seed's order; index 0 (favorite) is the primary signal.
ACTIONS: tuple[str, ...] = (
    "favorite_score",
    "reply_score",
    "repost_score",
    "photo_expand_score",
    "click_score",
    "profile_click_score",
    "vqv_score",
    "share_score",
    "share_via_dm_score",
    "share_via_copy_link_score",
    "dwell_score",
    "quote_score",
    "quoted_click_score",
    "follow_author_score",
    "not_interested_score",
    "block_author_score",
    "mute_author_score",
    "report_score",
    "dwell_time",
)

HistoryAttention = Literal["causal", "bidirectional"]
CandidatePositions = Literal["sequential", "shared"]
CapMethod = Literal["tanh", "soft_sign"]
AttentionImplementation = Literal["auto", "xla", "pallas"]


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """The Grok-1 style transformer shared by the ranker and the retrieval user tower.

    The first seven fields are the seed's. The rest select X's production variants (SPEC 7);
    their defaults reproduce the seed.
    """

    emb_size: int
    key_size: int
    num_q_heads: int
    num_kv_heads: int
    num_layers: int
    widening_factor: float = 4.0
    attn_output_multiplier: float = 1.0
    history_attention: HistoryAttention = "causal"
    candidate_positions: CandidatePositions = "sequential"
    logit_cap: float | None = 30.0
    cap_method: CapMethod = "tanh"
    qk_norm: bool = False
    attention_implementation: AttentionImplementation = "auto"

    def __post_init__(self):
        for name in ("emb_size", "key_size", "num_q_heads", "num_kv_heads", "num_layers"):
            value = getattr(self, name)
            _require(value >= 1, f"{name}: expected a positive int, got {value}")
        _require(
            self.num_q_heads % self.num_kv_heads == 0,
            f"num_kv_heads: expected a divisor of num_q_heads={self.num_q_heads}, "
            f"got {self.num_kv_heads}",
        )
        _require(self.key_size % 2 == 0, f"key_size: expected even (rotary), got {self.key_size}")
        _require(
            self.history_attention in ("causal", "bidirectional"),
            f"history_attention: expected 'causal' or 'bidirectional', "
            f"got {self.history_attention!r}",
        )
        _require(
            self.candidate_positions in ("sequential", "shared"),
            f"candidate_positions: expected 'sequential' or 'shared', "
            f"got {self.candidate_positions!r}",
        )
        _require(
            self.cap_method in ("tanh", "soft_sign"),
            f"cap_method: expected 'tanh' or 'soft_sign', got {self.cap_method!r}",
        )
        _require(
            self.logit_cap is None or self.logit_cap > 0,
            f"logit_cap: expected a positive float or None, got {self.logit_cap}",
        )
        _require(
            self.attention_implementation in ("auto", "xla", "pallas"),
            f"attention_implementation: expected 'auto', 'xla' or 'pallas', "
            f"got {self.attention_implementation!r}",
        )

    @property
    def ffn_size(self) -> int:
        """Gated FFN width: 2/3 of `widening_factor * emb_size`, rounded up to a multiple of 8."""
        size = int(self.widening_factor * self.emb_size) * 2 // 3
        return size + (8 - size) % 8


@dataclasses.dataclass(frozen=True)
class HashConfig:
    """How many hash functions map each entity to embedding rows (hash value 0 = padding)."""

    num_user_hashes: int = 2
    num_item_hashes: int = 2
    num_author_hashes: int = 2

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            _require(value >= 1, f"{field.name}: expected a positive int, got {value}")


def _check_model_config(config) -> None:
    _require(
        config.model.emb_size == config.emb_size,
        f"model.emb_size: expected emb_size={config.emb_size}, got {config.model.emb_size}",
    )
    _require(
        config.history_seq_len >= 0,
        f"history_seq_len: expected >= 0, got {config.history_seq_len}",
    )
    _require(
        config.candidate_seq_len >= 1,
        f"candidate_seq_len: expected >= 1, got {config.candidate_seq_len}",
    )
    _require(
        config.product_surface_vocab_size >= 1,
        f"product_surface_vocab_size: expected >= 1, got {config.product_surface_vocab_size}",
    )
    _require(
        jnp.dtype(config.fprop_dtype) in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)),
        f"fprop_dtype: expected float32 or bfloat16, got {config.fprop_dtype}",
    )


@dataclasses.dataclass(frozen=True)
class PhoenixModelConfig:
    """The ranking model (seed fields and defaults)."""

    model: TransformerConfig
    emb_size: int
    num_actions: int = len(ACTIONS)
    history_seq_len: int = 128
    candidate_seq_len: int = 32
    name: str | None = None
    fprop_dtype: type = jnp.bfloat16
    hash_config: HashConfig = dataclasses.field(default_factory=HashConfig)
    product_surface_vocab_size: int = 16

    def __post_init__(self):
        _check_model_config(self)
        _require(self.num_actions >= 1, f"num_actions: expected >= 1, got {self.num_actions}")


@dataclasses.dataclass(frozen=True)
class PhoenixRetrievalModelConfig:
    """The two-tower retrieval model (seed fields and defaults)."""

    model: TransformerConfig
    emb_size: int
    history_seq_len: int = 128
    candidate_seq_len: int = 32
    name: str | None = None
    fprop_dtype: type = jnp.bfloat16
    hash_config: HashConfig = dataclasses.field(default_factory=HashConfig)
    product_surface_vocab_size: int = 16
    num_actions: int = len(ACTIONS)

    def __post_init__(self):
        _check_model_config(self)
        _require(self.num_actions >= 1, f"num_actions: expected >= 1, got {self.num_actions}")


def demo_transformer_config(**overrides) -> TransformerConfig:
    """The seed demo's transformer (SPEC 6): emb 128, key 64, 2/2 heads, 2 layers."""
    values = dict(
        emb_size=128,
        key_size=64,
        num_q_heads=2,
        num_kv_heads=2,
        num_layers=2,
        widening_factor=2.0,
        attn_output_multiplier=0.125,
    )
    values.update(overrides)
    return TransformerConfig(**values)


def demo_ranker_config(fprop_dtype=jnp.bfloat16, **transformer_overrides) -> PhoenixModelConfig:
    """The seed demo's ranker: history 32, 8 candidates, 19 actions, surface vocab 16."""
    return PhoenixModelConfig(
        model=demo_transformer_config(**transformer_overrides),
        emb_size=128,
        history_seq_len=32,
        candidate_seq_len=8,
        fprop_dtype=fprop_dtype,
    )


def demo_retrieval_config(
    fprop_dtype=jnp.bfloat16, **transformer_overrides
) -> PhoenixRetrievalModelConfig:
    """The seed demo's retrieval model: history 32."""
    return PhoenixRetrievalModelConfig(
        model=demo_transformer_config(**transformer_overrides),
        emb_size=128,
        history_seq_len=32,
        candidate_seq_len=8,
        fprop_dtype=fprop_dtype,
    )
