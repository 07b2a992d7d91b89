"""The Grok-1 style transformer of Phoenix as Equinox modules.

Per-token layers (Linear, RMSNorm, the FFN) act on the last axis and take any leading axes.
Attention takes a whole batch `[batch, seq, emb]`, because the fused kernel behind
`phoenix_eqx.kernels.candidate_attention` is batched; the layers are stacked with `filter_vmap`
and run with `lax.scan`.

Candidate isolation splits the forward pass in two: a candidate attends only the prefix's keys
and values at each layer, and its own. So the `Transformer` runs either the whole
`[prefix | candidates]` sequence at once (`__call__`), or the prefix alone, keeping every
layer's keys and values (`encode_prefix` -> `PrefixCache`), then any number of candidates
against that cache (`score_candidates`). Both split paths are the same layers' maths.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from .config import TransformerConfig
from .initialisers import truncated_normal_init
from .kernels import cached_candidate_attention, candidate_attention

ROTARY_BASE = 10_000.0
RMS_NORM_EPS = 1e-5


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

    def _attention_options(self) -> dict:
        config = self.config
        return dict(
            scale=config.attn_output_multiplier,
            logit_cap=config.logit_cap,
            cap_method=config.cap_method,
            implementation=config.attention_implementation,
        )

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
            **self._attention_options(),
        )
        return self.merge_heads(attended)

    def attend_to_prefix(
        self,
        q: Float[Array, "batch candidates q_heads head_dim"],
        k: Float[Array, "batch candidates kv_heads head_dim"],
        v: Float[Array, "batch candidates kv_heads head_dim"],
        candidate_valid: Bool[Array, "batch candidates"],
        prefix_keys: Float[Array, "batch prefix kv_heads head_dim"],
        prefix_values: Float[Array, "batch prefix kv_heads head_dim"],
        prefix_valid: Bool[Array, "batch prefix"],
    ) -> Float[Array, "batch candidates emb"]:
        """Candidates' attention against a cached prefix (the candidate rows of `attend` on
        `[prefix | candidates]`), then the output projection."""
        attended = cached_candidate_attention(
            q,
            k,
            v,
            prefix_keys,
            prefix_values,
            prefix_valid=prefix_valid,
            candidate_valid=candidate_valid,
            **self._attention_options(),
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
        `h += N3(FFN(N2(h)))`, per token."""
        h = h + self.post_attention_norm(attended)
        return h + self.post_ffn_norm(self.ffn(self.pre_ffn_norm(h)))

    def prefix_keys_values(
        self, h: Float[Array, "batch prefix emb"], positions: Float[Array, "batch prefix"]
    ) -> tuple[
        Float[Array, "batch prefix q_heads head_dim"],
        Float[Array, "batch prefix kv_heads head_dim"],
        Float[Array, "batch prefix kv_heads head_dim"],
    ]:
        """This layer's projected q, k, v of the prefix tokens (what candidates attend)."""
        return self.attention.project(self.pre_attention_norm(h), positions)

    def encode_prefix(
        self,
        h: Float[Array, "batch prefix emb"],
        positions: Float[Array, "batch prefix"],
        prefix_valid: Bool[Array, "batch prefix"],
    ) -> tuple[
        Float[Array, "batch prefix emb"],
        Float[Array, "batch prefix kv_heads head_dim"],
        Float[Array, "batch prefix kv_heads head_dim"],
    ]:
        """The layer on the prefix alone (prefix rows never attend candidates), and the prefix's
        keys and values at this layer."""
        q, k, v = self.prefix_keys_values(h, positions)
        attended = self.attention.attend(q, k, v, prefix_valid, h.shape[1])
        return self.after_attention(h, attended), k, v

    def score_candidates(
        self,
        h: Float[Array, "batch candidates emb"],
        positions: Float[Array, "batch candidates"],
        candidate_valid: Bool[Array, "batch candidates"],
        prefix_keys: Float[Array, "batch prefix kv_heads head_dim"],
        prefix_values: Float[Array, "batch prefix kv_heads head_dim"],
        prefix_valid: Bool[Array, "batch prefix"],
    ) -> Float[Array, "batch candidates emb"]:
        """The layer on candidate tokens against this layer's cached prefix keys and values."""
        q, k, v = self.attention.project(self.pre_attention_norm(h), positions)
        attended = self.attention.attend_to_prefix(
            q, k, v, candidate_valid, prefix_keys, prefix_values, prefix_valid
        )
        return self.after_attention(h, attended)


class PrefixCache(eqx.Module):
    """Every layer's keys (rotary applied) and values of a batch's `[user | history]` prefix,
    with its padding mask: all a candidate needs from the rest of the sequence.

    Invalid prefix positions are never attended, whatever their keys and values hold.
    """

    keys: Float[Array, "layers batch prefix kv_heads head_dim"]
    values: Float[Array, "layers batch prefix kv_heads head_dim"]
    prefix_valid: Bool[Array, "batch prefix"]

    @property
    def num_prefix(self) -> int:
        return self.prefix_valid.shape[1]


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

    def _scan(self, step, carry, per_layer=None, *, layers=None):
        """`lax.scan` of `step(layer, carry, per_layer_input)` over the stacked layers."""
        params, static = eqx.partition(self.layers if layers is None else layers, eqx.is_array)

        def body(carry, inputs):
            layer_params, layer_input = inputs
            return step(eqx.combine(layer_params, static), carry, layer_input)

        return jax.lax.scan(body, carry, (params, per_layer))

    def __call__(
        self,
        h: Float[Array, "batch seq emb"],
        positions: Float[Array, "batch seq"],
        key_valid: Bool[Array, "batch seq"],
        num_prefix: int,
    ) -> Float[Array, "batch seq emb"]:
        """The whole sequence at once: `[prefix | candidates]` with candidate isolation."""

        def step(layer, h, _):
            return layer(h, positions, key_valid, num_prefix), None

        h, _ = self._scan(step, h)
        return h

    def encode_prefix(
        self,
        h: Float[Array, "batch prefix emb"],
        positions: Float[Array, "batch prefix"],
        prefix_valid: Bool[Array, "batch prefix"],
    ) -> PrefixCache:
        """Run the prefix alone and keep every layer's keys and values.

        Equal to the prefix part of `__call__`, since prefix rows never attend candidates. The
        last layer's prefix outputs feed nothing, so only its keys and values are computed.
        """

        def step(layer, h, _):
            h, k, v = layer.encode_prefix(h, positions, prefix_valid)
            return h, (k, v)

        all_but_last = jax.tree.map(lambda x: x[:-1] if eqx.is_array(x) else x, self.layers)
        h, (keys, values) = self._scan(step, h, layers=all_but_last)
        _, k, v = self.layer(self.num_layers - 1).prefix_keys_values(h, positions)
        return PrefixCache(
            keys=jnp.concatenate([keys, k[None]]),
            values=jnp.concatenate([values, v[None]]),
            prefix_valid=prefix_valid,
        )

    def score_candidates(
        self,
        h: Float[Array, "batch candidates emb"],
        positions: Float[Array, "batch candidates"],
        candidate_valid: Bool[Array, "batch candidates"],
        cache: PrefixCache,
    ) -> Float[Array, "batch candidates emb"]:
        """Candidate tokens through every layer against a cached prefix: the candidate rows of
        `__call__` on `[prefix | candidates]`."""

        def step(layer, h, cached):
            prefix_keys, prefix_values = cached
            h = layer.score_candidates(
                h, positions, candidate_valid, prefix_keys, prefix_values, cache.prefix_valid
            )
            return h, None

        h, _ = self._scan(step, h, (cache.keys, cache.values))
        return h


def prefix_positions(
    prefix_valid: Bool[Array, "batch prefix"], mode: str
) -> Float[Array, "batch prefix"]:
    """Rotary positions of the `[user | history]` prefix.

    `"sequential"` (the seed): `0..P-1`. `"shared"` (X's production): valid prefix tokens are
    right-aligned so the last one sits at `P-1` whatever the padding.
    """
    batch, num_prefix = prefix_valid.shape
    if mode == "sequential":
        positions = jnp.arange(num_prefix, dtype=jnp.float32)
        return jnp.broadcast_to(positions, (batch, num_prefix))
    valid_after = jnp.cumsum(prefix_valid[:, ::-1], axis=1)[:, ::-1] - prefix_valid
    return (num_prefix - 1 - valid_after).astype(jnp.float32)


def candidate_positions(
    batch: int,
    num_prefix: int,
    num_candidates: int,
    mode: str,
    offset: int | Int[Array, ""] = 0,
) -> Float[Array, "batch candidates"]:
    """Rotary positions of candidates after a prefix of `num_prefix` tokens.

    `"sequential"`: candidate `i` sits at `num_prefix + offset + i` (`offset`: where this slice
    starts in the request's candidate list). `"shared"`: every candidate sits at `num_prefix`,
    so a candidate's score does not depend on its slot, and `offset` has no effect.
    """
    if mode == "shared":
        return jnp.full((batch, num_candidates), num_prefix, jnp.float32)
    positions = num_prefix + offset + jnp.arange(num_candidates, dtype=jnp.float32)
    return jnp.broadcast_to(positions, (batch, num_candidates))


def token_positions(
    prefix_valid: Bool[Array, "batch prefix"],
    num_candidates: int,
    mode: str,
    offset: int | Int[Array, ""] = 0,
) -> Float[Array, "batch seq"]:
    """Rotary positions of `[prefix | candidates]`: `prefix_positions` then
    `candidate_positions` (see both)."""
    batch, num_prefix = prefix_valid.shape
    candidates = candidate_positions(batch, num_prefix, num_candidates, mode, offset)
    return jnp.concatenate([prefix_positions(prefix_valid, mode), candidates], axis=1)
