"""Model configurations: the seed's dataclasses, frozen, plus X's production options."""

import dataclasses
import math
from typing import Literal

import jax.numpy as jnp
import numpy as np

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
UserPooling = Literal["mean", "last"]
AttentionImplementation = Literal["auto", "xla", "pallas"]


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _is_int(value) -> bool:
    # Python and NumPy integers; bool is an int subclass but never a size.
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def _is_real(value) -> bool:
    return _is_int(value) or isinstance(value, float | np.floating)


def _normalise_numbers(config, ints: tuple[str, ...], reals: tuple[str, ...]) -> None:
    """Check `ints` are integers and `reals` real numbers, storing them as Python int / float
    (so that equal configs compare, hash and print equal whatever type was passed)."""
    for name in ints:
        value = getattr(config, name)
        _require(_is_int(value), f"{name}: expected an int, got {value!r} ({type(value).__name__})")
        object.__setattr__(config, name, int(value))
    for name in reals:
        value = getattr(config, name)
        if value is None and name == "logit_cap":
            continue
        _require(
            _is_real(value), f"{name}: expected a number, got {value!r} ({type(value).__name__})"
        )
        object.__setattr__(config, name, float(value))


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """The Grok-1 style transformer shared by the ranker and the retrieval user tower.

    The first seven fields are the seed's. The rest select X's production variants
    (docs/seed-compatibility.md); their defaults reproduce the seed.
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
        sizes = ("emb_size", "key_size", "num_q_heads", "num_kv_heads", "num_layers")
        _normalise_numbers(self, sizes, ("widening_factor", "attn_output_multiplier", "logit_cap"))
        for name in sizes:
            value = getattr(self, name)
            _require(value >= 1, f"{name}: expected a positive int, got {value}")
        _require(
            self.widening_factor > 0 and self.ffn_size >= 1,
            f"widening_factor: expected > 0 with a non-empty FFN (width "
            f"int(widening_factor * emb_size) * 2 // 3 >= 1), got {self.widening_factor}",
        )
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
        names = tuple(field.name for field in dataclasses.fields(self))
        _normalise_numbers(self, names, ())
        for name in names:
            value = getattr(self, name)
            _require(value >= 1, f"{name}: expected a positive int, got {value}")


@dataclasses.dataclass(frozen=True)
class PhoenixConfig:
    """The fields and checks both Phoenix models share (the seed's fields and defaults).

    `model` and `emb_size` may be passed by position, every other field by keyword only: the
    seed's two configs order them differently, so a positional value would be ambiguous.
    `candidate_seq_len` is the candidate count the ranker is trained and evaluated with (the
    models themselves take any count), and `num_actions` sizes the history's action inputs
    in both models.
    """

    model: TransformerConfig
    emb_size: int
    _: dataclasses.KW_ONLY
    num_actions: int = len(ACTIONS)
    history_seq_len: int = 128
    candidate_seq_len: int = 32
    fprop_dtype: type = jnp.bfloat16
    hash_config: HashConfig = dataclasses.field(default_factory=HashConfig)
    product_surface_vocab_size: int = 16

    def __post_init__(self):
        _require(
            isinstance(self.model, TransformerConfig),
            f"model: expected a TransformerConfig, got {type(self.model).__name__}",
        )
        _require(
            isinstance(self.hash_config, HashConfig),
            f"hash_config: expected a HashConfig, got {type(self.hash_config).__name__}",
        )
        lower_bounds = {
            "emb_size": 1,
            "num_actions": 1,
            "history_seq_len": 0,
            "candidate_seq_len": 1,
            "product_surface_vocab_size": 1,
        }
        _normalise_numbers(self, tuple(lower_bounds), ())
        _require(
            self.model.emb_size == self.emb_size,
            f"model.emb_size: expected emb_size={self.emb_size}, got {self.model.emb_size}",
        )
        for name, low in lower_bounds.items():
            value = getattr(self, name)
            _require(value >= low, f"{name}: expected >= {low}, got {value}")
        _require(
            jnp.dtype(self.fprop_dtype) in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)),
            f"fprop_dtype: expected float32 or bfloat16, got {self.fprop_dtype}",
        )


@dataclasses.dataclass(frozen=True)
class PhoenixModelConfig(PhoenixConfig):
    """The ranking model."""


@dataclasses.dataclass(frozen=True)
class PhoenixRetrievalModelConfig(PhoenixConfig):
    """The two-tower retrieval model (`candidate_seq_len` is unused by retrieval itself).

    `user_pooling` turns the user tower's outputs into one vector: `"mean"` over the valid
    positions (the seed), or `"last"`, the output at the last valid position, which with the
    causal tower has attended to the whole history and weighs recent items as it learned to
    (the SASRec reading).
    """

    _: dataclasses.KW_ONLY
    user_pooling: UserPooling = "mean"

    def __post_init__(self):
        super().__post_init__()
        _require(
            self.user_pooling in ("mean", "last"),
            f"user_pooling: expected 'mean' or 'last', got {self.user_pooling!r}",
        )


def transformer_config(
    emb_size: int,
    key_size: int,
    num_q_heads: int,
    num_kv_heads: int,
    num_layers: int,
    **options,
) -> TransformerConfig:
    """The one builder of this library's transformer configs: the seed demo's widening factor
    2 and the logit scale `1/sqrt(key_size)` (the demo's 0.125 at key 64); `options` set any
    other field or replace these two."""
    values = dict(widening_factor=2.0)
    if _is_int(key_size) and key_size >= 1:  # else TransformerConfig names the bad key_size
        values["attn_output_multiplier"] = 1.0 / math.sqrt(key_size)
    values.update(options)
    return TransformerConfig(
        emb_size=emb_size,
        key_size=key_size,
        num_q_heads=num_q_heads,
        num_kv_heads=num_kv_heads,
        num_layers=num_layers,
        **values,
    )


def demo_transformer_config(**overrides) -> TransformerConfig:
    """The seed demo's transformer: emb 128, key 64, 2/2 heads, 2 layers."""
    sizes = dict(emb_size=128, key_size=64, num_q_heads=2, num_kv_heads=2, num_layers=2)
    return transformer_config(**{**sizes, **overrides})


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
