"""The Grok-1 style transformer of Phoenix as Equinox modules.

Per-token layers (Linear, RMSNorm, the FFN) act on the last axis and take any leading axes.
Attention takes a whole batch `[batch, seq, emb]`, because the fused kernel behind
`phoenix_eqx.kernels.candidate_attention` is batched; the layers are stacked with `filter_vmap`
and run with `lax.scan`.
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from .config import TransformerConfig
from .kernels import candidate_attention

ROTARY_BASE = 10_000.0
RMS_NORM_EPS = 1e-5


def truncated_normal_init(
    key: PRNGKeyArray, shape: tuple[int, ...], fan_in: int, scale: float = 1.0
) -> Float[Array, "..."]:
    """Variance-scaling init: truncated normal with variance `scale / fan_in` (float32)."""
    # 0.8796 is the std of a standard normal truncated to [-2, 2].
    std = math.sqrt(scale / fan_in) / 0.87962566
    return std * jax.random.truncated_normal(key, -2.0, 2.0, shape, jnp.float32)


class Linear(eqx.Module):
    """A bias-free projection with the seed's `[in, out]` weight layout.

    The float32 weight is cast to the input's dtype, so bf16 activations give bf16 matmuls.
    """

    weight: Float[Array, "in_features out_features"]
    in_features: int = eqx.field(static=True)
    out_features: int = eqx.field(static=True)

    def __init__(
        self, in_features: int, out_features: int, *, key: PRNGKeyArray, scale: float = 1.0
    ):
        self.in_features = in_features
        self.out_features = out_features
        self.weight = truncated_normal_init(key, (in_features, out_features), in_features, scale)

    def __call__(
        self, x: Float[Array, "*batch in_features"]
    ) -> Float[Array, "*batch out_features"]:
        return jnp.dot(x, self.weight.astype(x.dtype))


class RMSNorm(eqx.Module):
    """RMS normalisation in float32 with a learned scale, cast back to the input dtype."""

    scale: Float[Array, " dim"]
    eps: float = eqx.field(static=True)

    def __init__(self, dim: int, *, eps: float = RMS_NORM_EPS):
        self.scale = jnp.ones((dim,), jnp.float32)
        self.eps = eps

    def __call__(self, x: Float[Array, "*batch dim"]) -> Float[Array, "*batch dim"]:
        x32 = x.astype(jnp.float32)
        mean_square = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
        return (self.scale * (x32 * jax.lax.rsqrt(mean_square + self.eps))).astype(x.dtype)


def apply_rotary(
    x: Float[Array, "batch seq heads head_dim"], positions: Float[Array, "batch seq"]
) -> Float[Array, "batch seq heads head_dim"]:
    """Rotary embedding, "rotate half" form: `x*cos + [-x2, x1]*sin`, computed in float32."""
    half = x.shape[-1] // 2
    inv_freq = 1.0 / ROTARY_BASE ** (jnp.arange(0, 2 * half, 2, dtype=jnp.float32) / (2 * half))
    phase = positions.astype(jnp.float32)[..., None] * inv_freq
    phase = jnp.concatenate([phase, phase], axis=-1)[:, :, None, :]
    x1, x2 = x[..., :half], x[..., half:]
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return (x * jnp.cos(phase) + rotated * jnp.sin(phase)).astype(x.dtype)


class Attention(eqx.Module):
    """Grouped-query attention with rotary positions, optional qk-norm and a logit cap.

    Masking (causal or bidirectional prefix, isolated candidates, key padding) happens inside
    `candidate_attention`.
    """

    query: Linear
    key: Linear
    value: Linear
    output: Linear
    query_norm: RMSNorm | None
    key_norm: RMSNorm | None
    num_q_heads: int = eqx.field(static=True)
    num_kv_heads: int = eqx.field(static=True)
    key_size: int = eqx.field(static=True)
    config: TransformerConfig = eqx.field(static=True)

    def __init__(self, config: TransformerConfig, *, key: PRNGKeyArray):
        q_key, k_key, v_key, o_key = jax.random.split(key, 4)
        dim, heads, kv_heads, key_size = (
            config.emb_size,
            config.num_q_heads,
            config.num_kv_heads,
            config.key_size,
        )
        self.query = Linear(dim, heads * key_size, key=q_key)
        self.key = Linear(dim, kv_heads * key_size, key=k_key)
        self.value = Linear(dim, kv_heads * key_size, key=v_key)
        self.output = Linear(heads * key_size, dim, key=o_key)
        self.query_norm = RMSNorm(heads * key_size) if config.qk_norm else None
        self.key_norm = RMSNorm(kv_heads * key_size) if config.qk_norm else None
        self.num_q_heads, self.num_kv_heads, self.key_size = heads, kv_heads, key_size
        self.config = config

    def project(
        self, x: Float[Array, "batch seq emb"], positions: Float[Array, "batch seq"]
    ) -> tuple[
        Float[Array, "batch seq q_heads head_dim"],
        Float[Array, "batch seq kv_heads head_dim"],
        Float[Array, "batch seq kv_heads head_dim"],
    ]:
        """Per-head q, k, v, with qk-norm and rotary positions applied to q and k.

        Split from `__call__` so that serving can cache a prefix's k and v per layer.
        """
        batch, seq_len, _ = x.shape
        q, k, v = self.query(x), self.key(x), self.value(x)
        if self.query_norm is not None and self.key_norm is not None:
            q, k = self.query_norm(q), self.key_norm(k)
        q = q.reshape(batch, seq_len, self.num_q_heads, self.key_size)
        k = k.reshape(batch, seq_len, self.num_kv_heads, self.key_size)
        v = v.reshape(batch, seq_len, self.num_kv_heads, self.key_size)
        return apply_rotary(q, positions), apply_rotary(k, positions), v

    def merge_heads(
        self, attended: Float[Array, "batch seq q_heads head_dim"]
    ) -> Float[Array, "batch seq emb"]:
        """The output projection of the concatenated heads."""
        batch, seq_len = attended.shape[:2]
        return self.output(attended.reshape(batch, seq_len, self.num_q_heads * self.key_size))

    def attend(
        self,
        q: Float[Array, "batch seq q_heads head_dim"],
        k: Float[Array, "batch seq kv_heads head_dim"],
        v: Float[Array, "batch seq kv_heads head_dim"],
        key_valid: Bool[Array, "batch seq"],
        num_prefix: int,
    ) -> Float[Array, "batch seq emb"]:
        """Masked attention of projected heads, then the output projection."""
        attended = candidate_attention(
            q,
            k,
            v,
            num_prefix=num_prefix,
            key_valid=key_valid,
            history=self.config.history_attention,
            scale=self.config.attn_output_multiplier,
            logit_cap=self.config.logit_cap,
            cap_method=self.config.cap_method,
            implementation=self.config.attention_implementation,
        )
        return self.merge_heads(attended)

    def __call__(
        self,
        x: Float[Array, "batch seq emb"],
        positions: Float[Array, "batch seq"],
        key_valid: Bool[Array, "batch seq"],
        num_prefix: int,
    ) -> Float[Array, "batch seq emb"]:
        q, k, v = self.project(x, positions)
        return self.attend(q, k, v, key_valid, num_prefix)


class GatedGeluFFN(eqx.Module):
    """`(gelu_tanh(x @ W1) * (x @ Wv)) @ Wout`, no biases."""

    gelu_proj: Linear
    linear_proj: Linear
    out_proj: Linear

    def __init__(self, dim: int, hidden: int, *, key: PRNGKeyArray):
        gelu_key, linear_key, out_key = jax.random.split(key, 3)
        self.gelu_proj = Linear(dim, hidden, key=gelu_key)
        self.linear_proj = Linear(dim, hidden, key=linear_key)
        self.out_proj = Linear(hidden, dim, key=out_key)

    def __call__(self, x: Float[Array, "*batch dim"]) -> Float[Array, "*batch dim"]:
        gated = jax.nn.gelu(self.gelu_proj(x), approximate=True) * self.linear_proj(x)
        return self.out_proj(gated)


class DecoderLayer(eqx.Module):
    """`h += N1(Attn(N0(h)))`, then `h += N3(FFN(N2(h)))`: norms before and after each block."""

    attention: Attention
    ffn: GatedGeluFFN
    pre_attention_norm: RMSNorm
    post_attention_norm: RMSNorm
    pre_ffn_norm: RMSNorm
    post_ffn_norm: RMSNorm

    def __init__(self, config: TransformerConfig, *, key: PRNGKeyArray):
        attention_key, ffn_key = jax.random.split(key)
        self.attention = Attention(config, key=attention_key)
        self.ffn = GatedGeluFFN(config.emb_size, config.ffn_size, key=ffn_key)
        self.pre_attention_norm = RMSNorm(config.emb_size)
        self.post_attention_norm = RMSNorm(config.emb_size)
        self.pre_ffn_norm = RMSNorm(config.emb_size)
        self.post_ffn_norm = RMSNorm(config.emb_size)

    def __call__(
        self,
        h: Float[Array, "batch seq emb"],
        positions: Float[Array, "batch seq"],
        key_valid: Bool[Array, "batch seq"],
        num_prefix: int,
    ) -> Float[Array, "batch seq emb"]:
        attended = self.attention(self.pre_attention_norm(h), positions, key_valid, num_prefix)
        return self.after_attention(h, attended)

    def after_attention(
        self, h: Float[Array, "*batch emb"], attended: Float[Array, "*batch emb"]
    ) -> Float[Array, "*batch emb"]:
        """The rest of the layer once attention has run: `h += N1(attended)`, then
        `h += N3(FFN(N2(h)))`, per token. Serving reuses it with a cached prefix."""
        h = h + self.post_attention_norm(attended)
        return h + self.post_ffn_norm(self.ffn(self.pre_ffn_norm(h)))


class Transformer(eqx.Module):
    """`num_layers` decoder layers with stacked parameters, run with `lax.scan`."""

    layers: DecoderLayer
    num_layers: int = eqx.field(static=True)

    def __init__(self, config: TransformerConfig, *, key: PRNGKeyArray):
        keys = jax.random.split(key, config.num_layers)
        self.layers = eqx.filter_vmap(lambda k: DecoderLayer(config, key=k))(keys)
        self.num_layers = config.num_layers

    def layer(self, index: int) -> DecoderLayer:
        """The `index`-th layer as a standalone module."""
        if not 0 <= index < self.num_layers:
            raise ValueError(f"index: expected 0 <= index < {self.num_layers}, got {index}")
        return jax.tree.map(lambda leaf: leaf[index] if eqx.is_array(leaf) else leaf, self.layers)

    def __call__(
        self,
        h: Float[Array, "batch seq emb"],
        positions: Float[Array, "batch seq"],
        key_valid: Bool[Array, "batch seq"],
        num_prefix: int,
    ) -> Float[Array, "batch seq emb"]:
        params, static = eqx.partition(self.layers, eqx.is_array)

        def step(carry, layer_params):
            layer = eqx.combine(layer_params, static)
            return layer(carry, positions, key_valid, num_prefix), None

        h, _ = jax.lax.scan(step, h, params)
        return h


def token_positions(
    prefix_valid: Bool[Array, "batch prefix"], num_candidates: int, mode: str
) -> Float[Array, "batch seq"]:
    """Rotary positions of `[prefix | candidates]`.

    `"sequential"` (the seed): `0..T-1`. `"shared"` (X's production): valid prefix tokens are
    right-aligned so the last one sits at `prefix-1` whatever the padding, and every candidate
    shares position `prefix`, so a candidate's score does not depend on its slot.
    """
    batch, num_prefix = prefix_valid.shape
    if mode == "sequential":
        positions = jnp.arange(num_prefix + num_candidates, dtype=jnp.float32)
        return jnp.broadcast_to(positions, (batch, num_prefix + num_candidates))
    valid_after = jnp.cumsum(prefix_valid[:, ::-1], axis=1)[:, ::-1] - prefix_valid
    prefix_positions = (num_prefix - 1 - valid_after).astype(jnp.float32)
    candidate_positions = jnp.full((batch, num_candidates), num_prefix, jnp.float32)
    return jnp.concatenate([prefix_positions, candidate_positions], axis=1)
