"""Block-sparse candidate-isolation attention as Mosaic GPU (Hopper) Pallas kernels.

Three kernels share one layout: a CTA runs two compute warpgroups, each owning a tile of 64 rows,
and a memory warpgroup that streams the other operand through a TMA pipeline.

- forward: rows are query tiles; the pipeline streams prefix key/value blocks, never candidate
  ones. A candidate's own key is a per-row dot product q_i.k_i that seeds the online softmax.
- dq: the same loop, recomputing probabilities from the saved log-sum-exp.
- dk/dv: rows are key tiles; the pipeline streams the query blocks that can see them (from the
  diagonal on when the history is causal). A candidate key's gradient is its self term alone.

Masking is an additive f32 bias per key (0 or -inf) built once outside the kernels: it folds
`key_valid`, the prefix bound and the sequence padding into one load per block. The causal
diagonal is the only mask built from indices.
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from .reference import zero_invalid_keys

LOG2E = math.log2(math.e)
COMPUTE_WGS = 2
MAX_CONCURRENT_STEPS = 2
MEMORY_REGISTERS = 40
# The backward kernels hold four [rows, head_dim] tiles per warpgroup: 64-row blocks fit SMEM.
BACKWARD_BLOCK = 64
SUPPORTED_DTYPES = (jnp.bfloat16, jnp.float16)
SUPPORTED_HEAD_DIMS = (64, 128)
# The row tiles each kernel copies in before its key loop, all onto one barrier: its arrival
# count is the number of copies, so it is derived from these lists.
FORWARD_ROW_LOADS = ("q", "k_self", "self_bias")
DQ_ROW_LOADS = ("q", "do", "k_self", "v_self", "lse", "delta", "self_bias")
DKV_ROW_LOADS = ("k", "v", "q_self", "do_self", "key_bias", "self_bias", "lse", "delta")


@dataclasses.dataclass(frozen=True)
class _Config:
    """Static parameters of one attention call (hashable: it is a custom_vjp static argument)."""

    num_prefix: int
    causal: bool
    scale: float
    logit_cap: float | None
    cap_method: str
    group: int  # query heads per key/value head
    block_q: int  # query rows per warpgroup (forward, dq) or per pipeline step (dk/dv)
    block_kv: int  # key rows per pipeline step (forward, dq) or per warpgroup (dk/dv)
    register_operands: bool  # GPU-only: feed softmax tiles to wgmma from registers
    interpret: bool  # run in Mosaic GPU's CPU interpreter


def _transforms(dtype):
    swizzle = 128
    return (
        plgpu.TilingTransform((8, swizzle // jnp.dtype(dtype).itemsize)),
        plgpu.SwizzleTransform(swizzle),
    )


def _tile_spec(rows, head_dim, dtype, offset=0):
    return plgpu.BlockSpec(
        block_shape=(rows, head_dim),
        index_map=lambda i: (i + offset, 0),
        transforms=_transforms(dtype),
    )


def _vector_spec(rows, offset=0):
    return plgpu.BlockSpec(block_shape=(rows,), index_map=lambda i: (i + offset,))


def _logits(x, cfg):
    """Scaled, soft-capped logits in log2 units (so exp2 gives the softmax), and the slope of
    the cap (d capped / d scaled logit; None when uncapped). Constants are folded so each
    element costs one multiply besides the cap's own special function."""
    if cfg.logit_cap is None:
        return x * (cfg.scale * LOG2E), None
    x = x * (cfg.scale / cfg.logit_cap)  # the logit in units of the cap
    if cfg.cap_method == "tanh":
        t = jnp.tanh(x)
        return t * (cfg.logit_cap * LOG2E), 1.0 - t * t
    shrink = 1.0 / (1.0 + jnp.abs(x))
    return x * shrink * (cfg.logit_cap * LOG2E), shrink * shrink


def _rows(vector, shape):
    """Broadcast a per-row vector over the columns of a tile."""
    return lax.broadcast_in_dim(vector, shape, [0])


def _cols(vector, shape):
    """Broadcast a per-column vector over the rows of a tile."""
    return lax.broadcast_in_dim(vector, shape, [1])


def _row_vector(ref):
    return plgpu.load(ref, layout=plgpu.Layout.WGMMA.reduce(1))


def _col_vector(ref):
    return plgpu.load(ref, layout=plgpu.Layout.WGMMA.reduce(0))


def _tile(ref):
    return plgpu.load(ref, layout=plgpu.Layout.WGMMA).astype(jnp.float32)


def _matmul(a_smem, b_smem, shape):
    """A fresh f32 `a @ b` with both operands in SMEM (the form the interpreter runs)."""

    def compute(acc_ref):
        plgpu.wgmma(acc_ref, a_smem, b_smem)
        return acc_ref[...]

    return pl.run_scoped(compute, plgpu.ACC(shape, jnp.float32))


def _matmul_pair(a1, b1, shape1, a2, b2, shape2):
    """Two independent SMEM-operand products issued before a single wait."""

    def compute(acc1, acc2):
        plgpu.wgmma(acc1, a1, b1)
        plgpu.wgmma(acc2, a2, b2)
        return acc1[...], acc2[...]

    return pl.run_scoped(compute, plgpu.ACC(shape1, jnp.float32), plgpu.ACC(shape2, jnp.float32))


def _accumulate(acc, a, b_smem, staging, cfg):
    """`acc + a @ b` for a tile `a` held in registers.

    The GPU-only form feeds `a` to wgmma from registers and accumulates in place; the
    interpretable form stages `a` in SMEM and adds a fresh product.
    """
    if cfg.register_operands:

        def compute(acc_ref):
            plgpu.wgmma(acc_ref, a, b_smem)

        return pl.run_state(compute)(plgpu.ACC.init(acc))
    staging[...] = a
    plgpu.commit_smem()
    return acc + _matmul(staging, b_smem, acc.shape)


def _mask_causal(s, row_start, col_start, keys_on_rows):
    """Keep key <= query; `keys_on_rows` says which tile axis indexes keys. Only tiles that
    cross the diagonal pay for the index arithmetic."""
    rows, cols = s.shape
    if keys_on_rows:
        crosses = row_start + rows - 1 > col_start
    else:
        crosses = col_start + cols - 1 > row_start

    def mask(s):
        row = plgpu.broadcasted_iota(jnp.int32, s.shape, 0, layout=plgpu.Layout.WGMMA) + row_start
        col = plgpu.broadcasted_iota(jnp.int32, s.shape, 1, layout=plgpu.Layout.WGMMA) + col_start
        return jnp.where(row <= col if keys_on_rows else col <= row, s, -jnp.inf)

    return lax.cond(crosses, mask, lambda s: s, s)


def _num_kv_steps(cta_q_start, cfg):
    """Prefix key blocks a CTA of query rows must visit (only those left of the diagonal)."""
    kv_end = jnp.int32(cfg.num_prefix)
    if cfg.causal:
        kv_end = jnp.minimum(kv_end, cta_q_start + COMPUTE_WGS * cfg.block_q)
    return (kv_end + cfg.block_kv - 1) // cfg.block_kv


def _stream_prefix_keys(body, compute, cta_q_start, cfg, k_ref, v_ref, key_bias_ref):
    """Run `body` over the prefix key blocks a CTA must visit, with K, V and the key bias
    streamed by the memory warpgroup (the forward and dq kernels share this loop)."""
    dtype, head_dim = k_ref.dtype, k_ref.shape[-1]
    pipeline = plgpu.emit_pipeline_warp_specialized(
        body,
        grid=(_num_kv_steps(cta_q_start, cfg),),
        memory_registers=MEMORY_REGISTERS,
        in_specs=[
            _tile_spec(cfg.block_kv, head_dim, dtype),
            _tile_spec(cfg.block_kv, head_dim, dtype),
            _vector_spec(cfg.block_kv),
        ],
        max_concurrent_steps=MAX_CONCURRENT_STEPS,
        wg_axis="wg",
        num_compute_wgs=COMPUTE_WGS,
        compute_context=compute,
    )
    pipeline(k_ref, v_ref, key_bias_ref)


def _copy_rows(names, copies, barrier):
    """Copy `copies[name] = (gmem source, smem destination)` for each of `names` onto one
    barrier, then wait for all of them (its arrival count is `len(names)`)."""
    if set(copies) != set(names):
        raise ValueError(f"copies: expected exactly {names}, got {tuple(copies)}")
    for name in names:
        plgpu.copy_gmem_to_smem(*copies[name], barrier)
    plgpu.barrier_wait(barrier)


def _forward_kernel(
    q_ref, k_ref, v_ref, key_bias_ref, self_bias_ref, out_ref, lse_ref, scratch, *, cfg
):
    q_smem, self_smem, self_bias_smem, lse_smem, staging, barriers = scratch
    load_barriers, v_barriers = barriers
    batch, head = lax.axis_index("batch"), lax.axis_index("heads")
    kv_head = head // cfg.group
    block_q, block_kv = cfg.block_q, cfg.block_kv
    cta_q_start = lax.axis_index("q_tiles") * (COMPUTE_WGS * block_q)
    head_dim = q_ref.shape[-1]

    def compute(pipeline):
        wg = lax.axis_index("wg")
        q_start = cta_q_start + wg * block_q
        rows = pl.ds(q_start, block_q)
        q_tile, self_tile = q_smem.at[wg], self_smem.at[wg]
        loaded, v_loaded = load_barriers.at[wg], v_barriers.at[wg]
        _copy_rows(
            FORWARD_ROW_LOADS,
            dict(
                q=(q_ref.at[batch, rows, head], q_tile),
                k_self=(k_ref.at[batch, rows, kv_head], self_tile),
                self_bias=(self_bias_ref.at[batch, rows], self_bias_smem.at[wg]),
            ),
            loaded,
        )

        # The candidate's own key seeds the softmax state: m = its logit, l = 1. Its value is
        # added at the end with weight exp2(s_self - m_final), so the self buffer can take v now.
        q_self, k_self = _tile(q_tile), _tile(self_tile)
        s_self, _ = _logits(jnp.sum(q_self * k_self, axis=1), cfg)
        s_self = s_self + _row_vector(self_bias_smem.at[wg])
        plgpu.commit_smem()  # every thread is done reading k_self before v overwrites it
        plgpu.copy_gmem_to_smem(v_ref.at[batch, rows, kv_head], self_tile, v_loaded)

        has_self = s_self > -jnp.inf
        init = (
            plgpu.layout_cast(jnp.zeros((block_q, head_dim), jnp.float32), plgpu.Layout.WGMMA),
            s_self,
            jnp.where(has_self, 1.0, 0.0),
        )
        acc, m, denom = pipeline(init)

        m_safe = jnp.where(m == -jnp.inf, 0.0, m)
        self_weight = jnp.exp2(s_self - m_safe)
        plgpu.barrier_wait(v_loaded)
        acc = acc + _rows(self_weight, acc.shape) * _tile(self_tile)
        has_key = denom > 0.0
        inv_l = jnp.where(has_key, 1.0 / jnp.where(has_key, denom, 1.0), 0.0)
        q_tile[...] = (acc * _rows(inv_l, acc.shape)).astype(q_tile.dtype)
        # +inf marks a row without keys: the backward then recomputes all-zero probabilities.
        lse_smem.at[wg][...] = jnp.where(has_key, m_safe + jnp.log2(denom), jnp.inf)
        plgpu.commit_smem()
        plgpu.copy_smem_to_gmem(q_tile, out_ref.at[batch, rows, head])
        plgpu.copy_smem_to_gmem(lse_smem.at[wg], lse_ref.at[batch, head, rows])
        plgpu.wait_smem_to_gmem(0)

    def body(indices, k_block, v_block, key_bias_block, carry):
        acc, m, denom = carry
        wg = lax.axis_index("wg")
        (step,) = indices
        q_start = cta_q_start + wg * block_q
        x = _matmul(q_smem.at[wg], k_block.T, (block_q, block_kv))
        s, _ = _logits(x, cfg)
        s = s + _cols(_col_vector(key_bias_block), x.shape)
        if cfg.causal:
            s = _mask_causal(s, q_start, step * block_kv, keys_on_rows=False)
        m_new = jnp.maximum(m, jnp.max(s, axis=1))
        # A row with no key yet keeps m = -inf; exponentiate against 0 so nothing turns NaN.
        m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)
        alpha = jnp.exp2(m - m_safe)
        p = jnp.exp2(s - _rows(m_safe, s.shape))
        denom = denom * alpha + jnp.sum(p, axis=1)
        acc = acc * _rows(alpha, acc.shape)
        acc = _accumulate(acc, p.astype(v_block.dtype), v_block, staging.at[wg], cfg)
        return acc, m_new, denom

    _stream_prefix_keys(
        body,
        compute,
        cta_q_start,
        cfg,
        k_ref.at[batch, :, kv_head],
        v_ref.at[batch, :, kv_head],
        key_bias_ref.at[batch],
    )


def _self_row_grads(q, do, k, v, self_bias, lse, delta, cfg):
    """Probability and logit gradient of each row's own key (zero where it has none)."""
    s, slope = _logits(jnp.sum(q * k, axis=1), cfg)
    p = jnp.exp2(s + self_bias - lse)
    ds = p * (jnp.sum(do * v, axis=1) - delta)
    return p, ds if slope is None else ds * slope


def _dq_kernel(
    q_ref,
    k_ref,
    v_ref,
    do_ref,
    lse_ref,
    delta_ref,
    key_bias_ref,
    self_bias_ref,
    dq_ref,
    scratch,
    *,
    cfg,
):
    tiles, vectors, staging, barriers = scratch
    q_smem, do_smem, k_self_smem, v_self_smem = tiles
    lse_smem, delta_smem, self_bias_smem = vectors
    batch, head = lax.axis_index("batch"), lax.axis_index("heads")
    kv_head = head // cfg.group
    block_q, block_kv = cfg.block_q, cfg.block_kv
    cta_q_start = lax.axis_index("q_tiles") * (COMPUTE_WGS * block_q)
    dtype = q_ref.dtype

    def compute(pipeline):
        wg = lax.axis_index("wg")
        rows = pl.ds(cta_q_start + wg * block_q, block_q)
        _copy_rows(
            DQ_ROW_LOADS,
            dict(
                q=(q_ref.at[batch, rows, head], q_smem.at[wg]),
                do=(do_ref.at[batch, rows, head], do_smem.at[wg]),
                k_self=(k_ref.at[batch, rows, kv_head], k_self_smem.at[wg]),
                v_self=(v_ref.at[batch, rows, kv_head], v_self_smem.at[wg]),
                lse=(lse_ref.at[batch, head, rows], lse_smem.at[wg]),
                delta=(delta_ref.at[batch, head, rows], delta_smem.at[wg]),
                self_bias=(self_bias_ref.at[batch, rows], self_bias_smem.at[wg]),
            ),
            barriers.at[wg],
        )

        k_self = _tile(k_self_smem.at[wg])
        _, ds_self = _self_row_grads(
            _tile(q_smem.at[wg]),
            _tile(do_smem.at[wg]),
            k_self,
            _tile(v_self_smem.at[wg]),
            _row_vector(self_bias_smem.at[wg]),
            _row_vector(lse_smem.at[wg]),
            _row_vector(delta_smem.at[wg]),
            cfg,
        )
        dq = _rows(ds_self, k_self.shape) * k_self
        dq = pipeline(dq) * cfg.scale
        q_tile = q_smem.at[wg]
        q_tile[...] = dq.astype(dtype)
        plgpu.commit_smem()
        plgpu.copy_smem_to_gmem(q_tile, dq_ref.at[batch, rows, head])
        plgpu.wait_smem_to_gmem(0)

    def body(indices, k_block, v_block, key_bias_block, dq):
        wg = lax.axis_index("wg")
        (step,) = indices
        shape = (block_q, block_kv)
        x, dp = _matmul_pair(q_smem.at[wg], k_block.T, shape, do_smem.at[wg], v_block.T, shape)
        s, slope = _logits(x, cfg)
        s = s + _cols(_col_vector(key_bias_block), shape)
        if cfg.causal:
            s = _mask_causal(s, cta_q_start + wg * block_q, step * block_kv, keys_on_rows=False)
        p = jnp.exp2(s - _rows(_row_vector(lse_smem.at[wg]), shape))
        ds = p * (dp - _rows(_row_vector(delta_smem.at[wg]), shape))
        if slope is not None:
            ds = ds * slope
        return _accumulate(dq, ds.astype(dtype), k_block, staging.at[wg], cfg)

    _stream_prefix_keys(
        body,
        compute,
        cta_q_start,
        cfg,
        k_ref.at[batch, :, kv_head],
        v_ref.at[batch, :, kv_head],
        key_bias_ref.at[batch],
    )


def _dkv_kernel(
    q_ref,
    k_ref,
    v_ref,
    do_ref,
    lse_ref,
    delta_ref,
    key_bias_ref,
    self_bias_ref,
    dk_ref,
    dv_ref,
    scratch,
    *,
    cfg,
):
    tiles, vectors, staging, barriers = scratch
    k_smem, v_smem, q_self_smem, do_self_smem = tiles
    key_bias_smem, self_bias_smem, lse_smem, delta_smem = vectors
    batch, head = lax.axis_index("batch"), lax.axis_index("heads")
    kv_head = head // cfg.group
    block_q, block_kv = cfg.block_q, cfg.block_kv
    cta_kv_start = lax.axis_index("kv_tiles") * (COMPUTE_WGS * block_kv)
    dtype, head_dim = q_ref.dtype, q_ref.shape[-1]
    num_q_blocks = q_ref.shape[1] // block_q
    # Query blocks that can see this CTA's keys: none for candidate keys (their only reader is
    # themselves), from the diagonal on for a causal prefix, all of them otherwise.
    first_q_block = cta_kv_start // block_q if cfg.causal else jnp.int32(0)
    num_q_steps = jnp.where(cta_kv_start < cfg.num_prefix, num_q_blocks - first_q_block, 0)

    def compute(pipeline):
        wg = lax.axis_index("wg")
        rows = pl.ds(cta_kv_start + wg * block_kv, block_kv)
        _copy_rows(
            DKV_ROW_LOADS,
            dict(
                k=(k_ref.at[batch, rows, kv_head], k_smem.at[wg]),
                v=(v_ref.at[batch, rows, kv_head], v_smem.at[wg]),
                q_self=(q_ref.at[batch, rows, head], q_self_smem.at[wg]),
                do_self=(do_ref.at[batch, rows, head], do_self_smem.at[wg]),
                key_bias=(key_bias_ref.at[batch, rows], key_bias_smem.at[wg]),
                self_bias=(self_bias_ref.at[batch, rows], self_bias_smem.at[wg]),
                lse=(lse_ref.at[batch, head, rows], lse_smem.at[wg]),
                delta=(delta_ref.at[batch, head, rows], delta_smem.at[wg]),
            ),
            barriers.at[wg],
        )

        q_self, do_self = _tile(q_self_smem.at[wg]), _tile(do_self_smem.at[wg])
        p_self, ds_self = _self_row_grads(
            q_self,
            do_self,
            _tile(k_smem.at[wg]),
            _tile(v_smem.at[wg]),
            _row_vector(self_bias_smem.at[wg]),
            _row_vector(lse_smem.at[wg]),
            _row_vector(delta_smem.at[wg]),
            cfg,
        )
        dk = _rows(ds_self, q_self.shape) * q_self
        dv = _rows(p_self, do_self.shape) * do_self
        dk, dv = pipeline((dk, dv))
        k_tile, v_tile = k_smem.at[wg], v_smem.at[wg]
        k_tile[...] = (dk * cfg.scale).astype(dtype)
        v_tile[...] = dv.astype(dtype)
        plgpu.commit_smem()
        plgpu.copy_smem_to_gmem(k_tile, dk_ref.at[batch, rows, head])
        plgpu.copy_smem_to_gmem(v_tile, dv_ref.at[batch, rows, head])
        plgpu.wait_smem_to_gmem(0)

    def body(indices, q_block, do_block, lse_block, delta_block, carry):
        dk, dv = carry
        wg = lax.axis_index("wg")
        (step,) = indices
        shape = (block_kv, block_q)
        k_tile, v_tile = k_smem.at[wg], v_smem.at[wg]
        x, dp = _matmul_pair(k_tile, q_block.T, shape, v_tile, do_block.T, shape)
        s, slope = _logits(x, cfg)
        s = s + _rows(_row_vector(key_bias_smem.at[wg]), shape)
        if cfg.causal:
            kv_start = cta_kv_start + wg * block_kv
            s = _mask_causal(s, kv_start, (first_q_block + step) * block_q, keys_on_rows=True)
        p = jnp.exp2(s - _cols(_col_vector(lse_block), shape))
        ds = p * (dp - _cols(_col_vector(delta_block), shape))
        if slope is not None:
            ds = ds * slope
        dv = _accumulate(dv, p.astype(dtype), do_block, staging.at[wg], cfg)
        dk = _accumulate(dk, ds.astype(dtype), q_block, staging.at[wg], cfg)
        return dk, dv

    pipeline = plgpu.emit_pipeline_warp_specialized(
        body,
        grid=(num_q_steps,),
        memory_registers=MEMORY_REGISTERS,
        in_specs=[
            _tile_spec(block_q, head_dim, dtype, first_q_block),
            _tile_spec(block_q, head_dim, dtype, first_q_block),
            _vector_spec(block_q, first_q_block),
            _vector_spec(block_q, first_q_block),
        ],
        max_concurrent_steps=MAX_CONCURRENT_STEPS,
        wg_axis="wg",
        num_compute_wgs=COMPUTE_WGS,
        compute_context=compute,
    )
    pipeline(
        q_ref.at[batch, :, head],
        do_ref.at[batch, :, head],
        lse_ref.at[batch, head],
        delta_ref.at[batch, head],
    )


def _smem_tiles(rows, cols, dtype):
    return plgpu.SMEM((COMPUTE_WGS, rows, cols), dtype, transforms=_transforms(dtype))


def _smem_vectors(rows):
    return plgpu.SMEM((COMPUTE_WGS, rows), jnp.float32)


def _staging(rows, cols, dtype, cfg):
    # The register-operand form stages nothing; a token buffer keeps the scratch layout uniform.
    if cfg.register_operands:
        return plgpu.SMEM((COMPUTE_WGS, 8, 64), dtype)
    return _smem_tiles(rows, cols, dtype)


def _launch(kernel, name, tiles, inputs, out_type, scratch, cfg, num_heads, batch):
    call = plgpu.kernel(
        functools.partial(kernel, cfg=cfg),
        out_type=out_type,
        scratch_types=[scratch],
        grid=(num_heads, tiles, batch),
        grid_names=("heads", name, "batch"),
        num_threads=COMPUTE_WGS + 1,
        thread_name="wg",
        compiler_params=plgpu.CompilerParams(approx_math=True),
    )
    if not cfg.interpret:
        return call(*inputs)
    # The backward pass is traced outside the caller's scope, so each launch sets the mode.
    with plgpu.force_gpu_interpret_mode(plgpu.InterpretGPUParams()):
        return call(*inputs)


def _forward(q, k, v, key_bias, self_bias, cfg):
    batch, seq_len, num_heads, head_dim = q.shape
    dtype, block_q = q.dtype, cfg.block_q
    scratch = (
        _smem_tiles(block_q, head_dim, dtype),
        _smem_tiles(block_q, head_dim, dtype),
        _smem_vectors(block_q),
        _smem_vectors(block_q),
        _staging(block_q, cfg.block_kv, dtype, cfg),
        (
            plgpu.Barrier(num_arrivals=len(FORWARD_ROW_LOADS), num_barriers=COMPUTE_WGS),
            plgpu.Barrier(num_barriers=COMPUTE_WGS),
        ),
    )
    out_type = (q, jax.ShapeDtypeStruct((batch, num_heads, seq_len), jnp.float32))
    tiles = seq_len // (COMPUTE_WGS * block_q)
    inputs = (q, k, v, key_bias, self_bias)
    return _launch(
        _forward_kernel, "q_tiles", tiles, inputs, out_type, scratch, cfg, num_heads, batch
    )


def _backward(q, k, v, key_bias, self_bias, out, lse, d_out, cfg):
    batch, seq_len, num_heads, head_dim = q.shape
    cfg = dataclasses.replace(cfg, block_q=BACKWARD_BLOCK, block_kv=BACKWARD_BLOCK)
    dtype, block_q, block_kv = q.dtype, cfg.block_q, cfg.block_kv
    delta = jnp.einsum("bthd,bthd->bht", out.astype(jnp.float32), d_out.astype(jnp.float32))
    inputs = (q, k, v, d_out, lse, delta, key_bias, self_bias)

    dq_scratch = (
        tuple(_smem_tiles(block_q, head_dim, dtype) for _ in range(4)),
        tuple(_smem_vectors(block_q) for _ in range(3)),
        _staging(block_q, block_kv, dtype, cfg),
        plgpu.Barrier(num_arrivals=len(DQ_ROW_LOADS), num_barriers=COMPUTE_WGS),
    )
    dq_tiles = seq_len // (COMPUTE_WGS * block_q)
    dq = _launch(_dq_kernel, "q_tiles", dq_tiles, inputs, q, dq_scratch, cfg, num_heads, batch)

    dkv_scratch = (
        tuple(_smem_tiles(block_kv, head_dim, dtype) for _ in range(4)),
        tuple(_smem_vectors(block_kv) for _ in range(4)),
        _staging(block_kv, block_q, dtype, cfg),
        plgpu.Barrier(num_arrivals=len(DKV_ROW_LOADS), num_barriers=COMPUTE_WGS),
    )
    # One dk/dv slice per query head; grouped heads are summed below, in f32.
    per_head = jax.ShapeDtypeStruct((batch, seq_len, num_heads, head_dim), dtype)
    dkv_tiles = seq_len // (COMPUTE_WGS * block_kv)
    dk, dv = _launch(
        _dkv_kernel,
        "kv_tiles",
        dkv_tiles,
        inputs,
        (per_head, per_head),
        dkv_scratch,
        cfg,
        num_heads,
        batch,
    )
    if cfg.group > 1:
        grouped = (batch, seq_len, num_heads // cfg.group, cfg.group, head_dim)
        dk, dv = (
            x.reshape(grouped).astype(jnp.float32).sum(axis=3).astype(dtype) for x in (dk, dv)
        )
    return dq, dk, dv


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _attention(q, k, v, key_bias, self_bias, cfg):
    out, _ = _forward(q, k, v, key_bias, self_bias, cfg)
    return out


def _attention_fwd(q, k, v, key_bias, self_bias, cfg):
    out, lse = _forward(q, k, v, key_bias, self_bias, cfg)
    return out, (q, k, v, key_bias, self_bias, out, lse)


def _attention_bwd(cfg, residuals, d_out):
    q, k, v, key_bias, self_bias, out, lse = residuals
    dq, dk, dv = _backward(q, k, v, key_bias, self_bias, out, lse, d_out, cfg)
    return dq, dk, dv, None, None


_attention.defvjp(_attention_fwd, _attention_bwd)


def candidate_attention_pallas(
    q,
    k,
    v,
    *,
    interpret: bool,
    num_prefix: int,
    key_valid,
    history: str,
    scale: float,
    logit_cap: float | None,
    cap_method: str,
    register_operands: bool | None = None,
    block_q: int = 64,
    block_kv: int | None = None,
):
    """Candidate-isolation attention through the Mosaic GPU kernels (inputs checked by the API).

    `register_operands` picks the GPU-only form that feeds softmax tiles to wgmma from registers;
    it defaults to on where a GPU runs the kernel and off in the interpreter, which cannot run
    it (also when the caller forced interpretation with `plgpu.force_gpu_interpret_mode`).
    `block_q` (query rows per warpgroup) and `block_kv` (keys per step) size the forward kernel;
    both must be multiples of 64. `block_kv` defaults to the largest that fits SMEM: 128 in the
    register-operand form, 64 in the staged one.
    """
    batch, seq_len, num_heads, head_dim = q.shape
    if q.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"q: expected dtype bfloat16 or float16, got {q.dtype}")
    if head_dim not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"q: expected head_dim in {SUPPORTED_HEAD_DIMS}, got {head_dim}")
    if register_operands is None:
        register_operands = not interpret and jax.default_backend() == "gpu"
    if block_kv is None:
        block_kv = 128 if register_operands else 64
    for name, block in (("block_q", block_q), ("block_kv", block_kv)):
        if block <= 0 or block % 64:
            raise ValueError(f"{name}: expected a positive multiple of 64, got {block}")
    if interpret and register_operands:
        raise ValueError("register_operands: expected False with interpret=True, got True")
    cfg = _Config(
        num_prefix=num_prefix,
        causal=history == "causal",
        scale=scale,
        logit_cap=logit_cap,
        cap_method=cap_method,
        group=num_heads // k.shape[2],
        block_q=block_q,
        block_kv=block_kv,
        register_operands=register_operands,
        interpret=interpret,
    )

    # Pad the sequence to whole CTA tiles. Padded positions sit after every candidate, so they
    # are never keys of a real row: the biases below exclude them.
    multiple = math.lcm(COMPUTE_WGS * block_q, block_kv, COMPUTE_WGS * BACKWARD_BLOCK)
    padded_len = -(-seq_len // multiple) * multiple
    positions = jnp.arange(padded_len)
    valid = jnp.ones((batch, seq_len), bool) if key_valid is None else key_valid
    valid = jnp.pad(valid, ((0, 0), (0, padded_len - seq_len)))
    key_bias = jnp.where(valid & (positions < num_prefix), 0.0, -jnp.inf)
    self_bias = jnp.where(valid & (positions >= num_prefix), 0.0, -jnp.inf)
    # The -inf bias gives a masked key weight 0, but 0 * NaN is NaN: zero such keys' values.
    k, v = zero_invalid_keys(k, v, key_valid)
    pad = ((0, 0), (0, padded_len - seq_len), (0, 0), (0, 0))
    q, k, v = (jnp.pad(x, pad) for x in (q, k, v))

    return _attention(q, k, v, key_bias, self_bias, cfg)[:, :seq_len]
