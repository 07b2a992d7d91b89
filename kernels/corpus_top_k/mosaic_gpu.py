"""Blocked matmul + top-k on Hopper: a Mosaic GPU kernel that never writes the score matrix.

Pass 1 (the kernel) scores a block of queries against each tile of `tile_n` consecutive corpus
items on the tensor cores and keeps three numbers per (query, tile): the tile's best score, the
position of its first occurrence, and the best score of the other items (the runner-up). Only
these [num_tiles, batch] statistics reach device memory.

Pass 2 (`merge.py`, XLA) takes each tile's best item as a candidate, selects the top k
candidates, and re-scores in full only the tiles whose runner-up could still beat the k-th
candidate. That keeps the result exact; on typical data only a few tiles per query qualify.
"""

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from .merge import TileStats, exact_top_k_from_tile_stats
from .reference import TopK

# A wgmma instruction covers 64 rows; query blocks are 64 or 128 rows.
_MIN_BLOCK_B = 64
# The width of a swizzled bf16 tile in shared memory (128 bytes); `dim` is padded to it.
_DIM_QUANTUM = 64
# Shared memory the kernel may plan for per block (the H100 gives a block up to 227 KiB).
_SMEM_BUDGET = 200 * 1024


def _tile_stats_kernel(
    queries,
    corpus,
    bias,
    *,
    num_tiles: int,
    block_b: int,
    tile_n: int,
    chunk_d: int,
    tiles_per_split: int,
    stages: int,
) -> TileStats:
    """Per (tile of `tile_n` items, query) best score, its first position, and runner-up.

    `queries` [padded_batch, dim] and `corpus` [>= num_tiles * tile_n, dim] share a 16-bit
    dtype; `bias` [num_tiles * tile_n] f32 is added to the scores (0 keeps an item, -inf
    drops it) or is None. Scores that are NaN make the tile's best NaN.
    """
    padded_batch, dim = queries.shape
    num_chunks = dim // chunk_d
    num_splits = math.ceil(num_tiles / tiles_per_split)
    itemsize = jnp.dtype(corpus.dtype).itemsize
    swizzle = plgpu.find_swizzle(chunk_d * itemsize * 8)
    transforms = (
        plgpu.TilingTransform((8, swizzle // itemsize)),
        plgpu.SwizzleTransform(swizzle),
    )
    stat_types = (
        jax.ShapeDtypeStruct((num_tiles, padded_batch), jnp.float32),
        jax.ShapeDtypeStruct((num_tiles, padded_batch), jnp.int32),
        jax.ShapeDtypeStruct((num_tiles, padded_batch), jnp.float32),
    )

    def body(q_gmem, corpus_gmem, *refs):
        bias_gmem = None if bias is None else refs[0]
        refs = refs if bias is None else refs[1:]
        best_gmem, first_gmem, runner_up_gmem, q_smem, out_smem, q_barriers = refs
        best_smem, first_smem, runner_up_smem = out_smem
        block = lax.axis_index("b")
        split = lax.axis_index("s")
        rows = pl.ds(block * block_b, block_b)
        first_tile = split * tiles_per_split
        split_tiles = jnp.minimum(tiles_per_split, num_tiles - first_tile)

        # The query block stays in shared memory for the whole split; the corpus streams by.
        for c in range(num_chunks):
            plgpu.copy_gmem_to_smem(
                q_gmem.at[rows, pl.ds(c * chunk_d, chunk_d)], q_smem.at[c], q_barriers.at[c]
            )
        for c in range(num_chunks):
            plgpu.barrier_wait(q_barriers.at[c])

        def step(indices, corpus_smem, *rest):
            tile, chunk = indices
            bias_smem = rest[0] if bias is not None else None
            partial = rest[-1] if num_chunks > 1 else None

            def matmul(acc_ref):
                plgpu.wgmma(acc_ref, q_smem.at[chunk], corpus_smem.transpose((1, 0)))
                return acc_ref[...]

            scores = pl.run_scoped(matmul, plgpu.ACC((block_b, tile_n), jnp.float32))
            if partial is not None:
                scores = scores + partial
            is_last_chunk = chunk == num_chunks - 1

            @pl.when(is_last_chunk)
            def _select():
                write_tile_stats(first_tile + tile, scores, bias_smem)

            if partial is not None:
                # Partial sums over the `dim` chunks restart at every tile.
                restart = jnp.full(scores.shape, is_last_chunk)
                return jnp.where(restart, jnp.zeros_like(scores), scores)
            return None

        def write_tile_stats(global_tile, scores, bias_smem):
            if bias_smem is not None:
                item_bias = plgpu.load(bias_smem, layout=plgpu.Layout.WGMMA.reduce(0))
                scores = scores + lax.broadcast_in_dim(item_bias, scores.shape, [1])
            column = plgpu.broadcasted_iota(jnp.int32, scores.shape, 1, layout=plgpu.Layout.WGMMA)
            best = scores.max(axis=1)
            is_best = scores == lax.broadcast_in_dim(best, scores.shape, [0])
            first = jnp.where(is_best, column, jnp.full_like(column, tile_n)).min(axis=1)
            is_first = column == lax.broadcast_in_dim(first, scores.shape, [0])
            others = jnp.where(is_first, jnp.full_like(scores, -jnp.inf), scores)
            runner_up = others.max(axis=1)
            # The previous tile's statistics must have left shared memory first.
            plgpu.wait_smem_to_gmem(0, wait_read_only=True)
            best_smem[...] = best
            first_smem[...] = first
            runner_up_smem[...] = runner_up
            plgpu.commit_smem()
            for smem, gmem in (
                (best_smem, best_gmem),
                (first_smem, first_gmem),
                (runner_up_smem, runner_up_gmem),
            ):
                plgpu.copy_smem_to_gmem(smem, gmem.at[global_tile, rows])

        in_specs = [
            plgpu.BlockSpec(
                (tile_n, chunk_d),
                lambda t, c: (first_tile + t, c),
                transforms=transforms,
            )
        ]
        if bias is not None:
            in_specs.append(plgpu.BlockSpec((tile_n,), lambda t, c: (first_tile + t,)))
        init_carry = None
        if num_chunks > 1:
            init_carry = plgpu.layout_cast(
                jnp.zeros((block_b, tile_n), jnp.float32), plgpu.Layout.WGMMA
            )
        pipeline = plgpu.emit_pipeline(
            step,
            grid=(split_tiles, num_chunks),
            in_specs=in_specs,
            max_concurrent_steps=stages,
            init_carry=init_carry,
        )
        pipeline(corpus_gmem, *(() if bias is None else (bias_gmem,)))
        plgpu.wait_smem_to_gmem(0)

    kernel = plgpu.kernel(
        body,
        out_type=stat_types,
        scratch_types=(
            plgpu.SMEM((num_chunks, block_b, chunk_d), queries.dtype, transforms=transforms),
            (
                plgpu.SMEM((block_b,), jnp.float32),
                plgpu.SMEM((block_b,), jnp.int32),
                plgpu.SMEM((block_b,), jnp.float32),
            ),
            plgpu.Barrier(num_barriers=num_chunks),
        ),
        grid=(padded_batch // block_b, num_splits),
        grid_names=("b", "s"),
    )
    args = (queries, corpus) if bias is None else (queries, corpus, bias)
    return TileStats(*kernel(*args))


def _num_sms(interpret: bool) -> int:
    if interpret:
        return 1  # the interpreter runs programs one after another
    return getattr(jax.devices()[0], "core_count", 132)


def _plan(batch: int, dim: int, num_tiles: int, tile_n: int, masked: bool, interpret: bool):
    """Block sizes, pipeline depth and how many programs split the corpus."""
    block_b = _MIN_BLOCK_B if batch <= _MIN_BLOCK_B or dim > 512 else 2 * _MIN_BLOCK_B
    chunk_d = 128 if dim % 128 == 0 else _DIM_QUANTUM
    stage_bytes = tile_n * chunk_d * 2 + (4 * tile_n if masked else 0)
    query_bytes = block_b * dim * 2
    stages = max(2, min(4, (_SMEM_BUDGET - query_bytes) // stage_bytes))
    num_blocks = math.ceil(batch / block_b)
    # About two programs per multiprocessor, each streaming its own stretch of the corpus.
    splits = max(1, min(num_tiles, math.ceil(2 * _num_sms(interpret) / num_blocks)))
    tiles_per_split = math.ceil(num_tiles / splits)
    return block_b, chunk_d, stages, tiles_per_split


@functools.partial(jax.jit, static_argnames=("k", "tile_n", "interpret"))
def corpus_top_k_pallas(
    queries,
    corpus,
    k: int,
    *,
    corpus_mask=None,
    tile_n: int | None = None,
    interpret: bool = False,
) -> TopK:
    """Exact top-k through the tile-statistics kernel; see the module docstring.

    `tile_n` (items per tile, a multiple of 8 up to 256) defaults to 128 for up to 64 queries,
    where the corpus stream dominates and wider tiles amortise each tile's fixed work, and to
    64 above, where narrower tiles hold fewer winners each and leave fewer tiles to re-score.

    The corpus must be bfloat16 (the API says why and raises otherwise).
    """
    if tile_n is None:
        tile_n = 128 if queries.shape[0] <= _MIN_BLOCK_B else 64
    if tile_n % 8 or not 8 <= tile_n <= 256:
        raise ValueError(f"tile_n: expected a multiple of 8 in [8, 256], got {tile_n}")
    queries = queries.astype(corpus.dtype)
    batch, dim = queries.shape
    num_tiles = corpus.shape[0] // tile_n
    if num_tiles == 0:
        return exact_top_k_from_tile_stats(
            queries, corpus, k, corpus_mask, TileStats(*_no_tiles(batch)), tile_n
        )
    block_b, chunk_d, stages, tiles_per_split = _plan(
        batch, dim, num_tiles, tile_n, corpus_mask is not None, interpret
    )
    # Zero columns change no score. The kernel's view of the corpus must come in whole 8-row
    # groups and 64-column swizzle tiles: other lengths or widths cost a copy of the corpus.
    padded_dim = -(-dim // _DIM_QUANTUM) * _DIM_QUANTUM
    padded_batch = -(-batch // block_b) * block_b
    kernel_queries = jnp.pad(queries, ((0, padded_batch - batch), (0, padded_dim - dim)))
    kernel_corpus = corpus if corpus.shape[0] % 8 == 0 else corpus[: num_tiles * tile_n]
    if padded_dim != dim:
        kernel_corpus = jnp.pad(kernel_corpus, ((0, 0), (0, padded_dim - dim)))
    bias = None
    if corpus_mask is not None:
        bias = jnp.where(corpus_mask[: num_tiles * tile_n], 0.0, -jnp.inf).astype(jnp.float32)
    run = functools.partial(
        _tile_stats_kernel,
        kernel_queries,
        kernel_corpus,
        bias,
        num_tiles=num_tiles,
        block_b=block_b,
        tile_n=tile_n,
        chunk_d=chunk_d,
        tiles_per_split=tiles_per_split,
        stages=stages,
    )
    if interpret:
        with plgpu.force_gpu_interpret_mode(plgpu.InterpretGPUParams()):
            stats = run()
    else:
        stats = run()
    return exact_top_k_from_tile_stats(queries, corpus, k, corpus_mask, stats, tile_n)


def _no_tiles(batch: int):
    empty = jnp.zeros((0, batch), jnp.float32)
    return empty, empty.astype(jnp.int32), empty
