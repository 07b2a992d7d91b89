"""Exact top-k from per-tile statistics (pass 2 of the kernel path), in XLA.

Every rule of the contract lives in the int32 sort keys of `reference.score_sort_key`; ties
among equal keys go to the lower corpus index.

Why the result is exact: each tile offers its best item as a candidate. Let `L` be the key of
the k-th best candidate. The k best candidates all have key >= L, so an item whose key is below
L is not a winner. Within a tile every item other than the candidate scores at most the tile's
runner-up, so a tile whose runner-up key is below L holds no winner besides its candidate. Every
other tile ("open": runner-up key >= L, or statistics that are NaN/-inf and so bound nothing) is
re-scored in full. The winners are then among the k best candidates and the open tiles' items.
"""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Bool, Float, Int

from .reference import MASKED_KEY, TopK, corpus_scores, score_sort_key

_INT32_MAX = jnp.iinfo(jnp.int32).max
# Open tiles are re-scored a round at a time; a round gathers at most this many corpus bytes.
_RESCAN_ROUND_BYTES = 1 << 30
_MAX_RESCAN_TILES = 64
# XLA's top-k is slow over long rows at any k (H100, 1024 rows of 156k keys: ~20 ms at k=100),
# so long rows are first cut down by group maxima.
_GROUPING_MIN_KEYS = 4096
_GROUPING_MIN_RATIO = 8


class TileStats(NamedTuple):
    """Per (tile, query row) statistics from the kernel, tile-major."""

    best: Float[Array, "num_tiles padded_batch"]  # max score in the tile, NaN if any is NaN
    first: Int[Array, "num_tiles padded_batch"]  # position in the tile of the first best
    runner_up: Float[Array, "num_tiles padded_batch"]  # max over the tile's other items


class Selection(NamedTuple):
    keys: Int[Array, "batch width"]
    indices: Int[Array, "batch width"]
    scores: Float[Array, "batch width"]


def _upper_bound_key(scores: Float[Array, "*shape"]) -> Int[Array, "*shape"]:
    """The sort key of a score, except that a NaN (an unknown maximum) bounds nothing."""
    return jnp.where(jnp.isnan(scores), _INT32_MAX, score_sort_key(scores))


def _masked_keys(
    scores: Float[Array, "batch n"],
    indices: Int[Array, "batch n"] | Int[Array, " n"],
    corpus_mask: Bool[Array, " num_items"] | None,
) -> Int[Array, "batch n"]:
    keys = score_sort_key(scores)
    if corpus_mask is None:
        return keys
    return jnp.where(corpus_mask[indices], keys, jnp.int32(MASKED_KEY))


def best_of(selection: Selection, k: int) -> Selection:
    """The k best entries per row: key descending, then index ascending (a full sort)."""
    # `~key` reverses the key order without the overflow of `-key` at INT32_MIN.
    flipped, indices, scores = lax.sort(
        (~selection.keys, selection.indices, selection.scores), dimension=1, num_keys=2
    )
    return Selection(~flipped[:, :k], indices[:, :k], scores[:, :k])


def stable_top_k(
    keys: Int[Array, "batch n"], k: int
) -> tuple[Int[Array, "batch k"], Int[Array, "batch k"]]:
    """`lax.top_k(keys, k)` with ties to the lower position, without XLA's slow stable sort.

    The k-th largest key `kth` needs no stability; the winners are then every key above it
    and the lowest positions holding `kth`, which one more top-k of unique priorities picks.
    In long rows, whole groups of keys are first ruled out by their group maximum.
    """
    batch, n = keys.shape
    if n >= _GROUPING_MIN_KEYS and n > _GROUPING_MIN_RATIO * k:
        return _grouped_top_k(keys, k)
    kth = lax.top_k(keys, k, is_stable=False)[0][:, k - 1 :]
    positions = jnp.arange(n, dtype=jnp.int32)
    priority = jnp.where(keys > kth, n, jnp.where(keys == kth, n - 1 - positions, -1))
    chosen = lax.top_k(priority, k, is_stable=False)[1]
    flipped, chosen = lax.sort(
        (~jnp.take_along_axis(keys, chosen, axis=1), chosen), dimension=1, num_keys=2
    )
    return ~flipped, chosen


def _grouped_top_k(
    keys: Int[Array, "batch n"], k: int
) -> tuple[Int[Array, "batch k"], Int[Array, "batch k"]]:
    # The k groups with the best maxima (ties to the lower group) hold the k best keys, by the
    # argument of the module docstring; their keys, in position order, go to a final top-k.
    batch, n = keys.shape
    group = max(2, math.isqrt(n // k))
    num_groups = -(-n // group)
    padded = jnp.pad(keys, ((0, 0), (0, num_groups * group - n)), constant_values=MASKED_KEY)
    group_max = padded.reshape(batch, num_groups, group).max(axis=2)
    groups = jnp.sort(stable_top_k(group_max, k)[1], axis=1)
    positions = (groups[:, :, None] * group + jnp.arange(group, dtype=jnp.int32)).reshape(batch, -1)
    top_keys, chosen = stable_top_k(jnp.take_along_axis(padded, positions, axis=1), k)
    return top_keys, jnp.take_along_axis(positions, chosen, axis=1)


def as_top_k(selection: Selection) -> TopK:
    returned = selection.keys != MASKED_KEY
    return TopK(
        scores=jnp.where(returned, selection.scores, -jnp.inf).astype(jnp.float32),
        indices=jnp.where(returned, selection.indices, -1).astype(jnp.int32),
    )


def _empty(batch: int, width: int) -> Selection:
    return Selection(
        jnp.full((batch, width), MASKED_KEY, jnp.int32),
        jnp.full((batch, width), -1, jnp.int32),
        jnp.full((batch, width), -jnp.inf, jnp.float32),
    )


def _score_items(
    queries: Float[Array, "batch dim"],
    corpus: Float[Array, "num_items dim"],
    start: int,
    stop: int,
    corpus_mask: Bool[Array, " num_items"] | None,
) -> Selection:
    """Exact keys of the contiguous items [start, stop) for every query."""
    scores = corpus_scores(queries, corpus[start:stop])
    indices = jnp.arange(start, stop, dtype=jnp.int32)
    keys = _masked_keys(scores, indices, corpus_mask)
    return Selection(keys, jnp.broadcast_to(indices, keys.shape), scores)


def exact_top_k_from_tile_stats(
    queries: Float[Array, "batch dim"],
    corpus: Float[Array, "num_items dim"],
    k: int,
    corpus_mask: Bool[Array, " num_items"] | None,
    stats: TileStats,
    tile_n: int,
) -> TopK:
    """Exact top-k given the kernel's statistics over the first `num_tiles * tile_n` items.

    `queries` are already in the corpus dtype; items past the last whole tile are scored here.
    """
    batch = queries.shape[0]
    num_items = corpus.shape[0]
    num_tiles = stats.best.shape[0]
    tiled_items = num_tiles * tile_n
    best, first, runner_up = (stat[:, :batch].T for stat in stats)

    # One candidate per tile: its best item, unless that score is NaN or -inf, where the
    # kernel's maximum says nothing about which item (or whether a valid one) attains it.
    has_candidate = best > -jnp.inf
    tile_starts = jnp.arange(num_tiles, dtype=jnp.int32) * tile_n
    candidates = Selection(
        jnp.where(has_candidate, score_sort_key(best), jnp.int32(MASKED_KEY)),
        tile_starts[None, :] + first,
        best,
    )
    bounds = jnp.where(has_candidate, _upper_bound_key(runner_up), _upper_bound_key(best))
    if tiled_items < num_items:
        tail = _score_items(queries, corpus, tiled_items, num_items, corpus_mask)
        candidates = Selection(
            *(jnp.concatenate(pair, axis=1) for pair in zip(candidates, tail, strict=True))
        )

    # Candidates are in index order, so ties to the lower position are ties to the lower index.
    width = min(k, candidates.keys.shape[1])
    top_keys, positions = stable_top_k(candidates.keys, width)
    running = Selection(
        top_keys,
        jnp.take_along_axis(candidates.indices, positions, axis=1),
        jnp.take_along_axis(candidates.scores, positions, axis=1),
    )
    if width < k:
        running = Selection(
            *(
                jnp.concatenate(pair, axis=1)
                for pair in zip(running, _empty(batch, k - width), strict=True)
            )
        )
    if num_tiles == 0:
        return as_top_k(running)
    kth_key = running.keys[:, k - 1]
    is_open = bounds >= kth_key[:, None]

    # An open tile is re-scored in full, so its candidate leaves the running selection.
    candidate_tile = jnp.clip(running.indices // tile_n, 0, num_tiles - 1)
    from_open_tile = (running.indices < tiled_items) & jnp.take_along_axis(
        is_open, candidate_tile, axis=1
    )
    running = running._replace(keys=jnp.where(from_open_tile, MASKED_KEY, running.keys))

    tiles_per_round = max(
        1,
        min(
            _MAX_RESCAN_TILES,
            num_tiles,
            _RESCAN_ROUND_BYTES // (batch * tile_n * corpus.shape[1] * corpus.dtype.itemsize),
        ),
    )
    open_rank = jnp.cumsum(is_open, axis=1, dtype=jnp.int32)
    num_rounds = (jnp.max(open_rank[:, -1]) + tiles_per_round - 1) // tiles_per_round
    offsets = jnp.arange(tile_n, dtype=jnp.int32)

    def rescan_round(round_index, running: Selection) -> Selection:
        # The tiles of rank round_index * tiles_per_round + 1 ... per row (num_tiles if none).
        wanted = round_index * tiles_per_round + jnp.arange(1, tiles_per_round + 1)
        tiles = jax.vmap(jnp.searchsorted)(
            open_rank, jnp.broadcast_to(wanted, (batch, wanted.size))
        )
        is_real = tiles < num_tiles
        indices = (jnp.where(is_real, tiles, 0)[:, :, None] * tile_n + offsets).reshape(batch, -1)
        scores = jnp.einsum(
            "bd,bnd->bn",
            queries,
            corpus[indices],
            preferred_element_type=jnp.float32,
            precision=lax.Precision.HIGHEST,
        )
        keys = _masked_keys(scores, indices, corpus_mask)
        keys = jnp.where(jnp.repeat(is_real, tile_n, axis=1), keys, jnp.int32(MASKED_KEY))
        merged = Selection(
            *(
                jnp.concatenate(pair, axis=1)
                for pair in zip(running, (keys, indices, scores), strict=True)
            )
        )
        return best_of(merged, k)

    running = lax.fori_loop(0, num_rounds, rescan_round, running)
    return as_top_k(running)


def top_k_by_chunks(
    queries: Float[Array, "batch dim"],
    corpus: Float[Array, "num_items dim"],
    k: int,
    corpus_mask: Bool[Array, " num_items"] | None,
    chunk: int,
) -> TopK:
    """Exact top-k scoring `chunk` items at a time in XLA: memory O(batch * (k + chunk))."""
    batch = queries.shape[0]
    num_items = corpus.shape[0]
    num_chunks = num_items // chunk

    def absorb(running: Selection, fresh: Selection) -> Selection:
        width = min(k, fresh.keys.shape[1])
        top_keys, positions = stable_top_k(fresh.keys, width)
        fresh = Selection(
            top_keys,
            jnp.take_along_axis(fresh.indices, positions, axis=1),
            jnp.take_along_axis(fresh.scores, positions, axis=1),
        )
        return best_of(
            Selection(
                *(jnp.concatenate(pair, axis=1) for pair in zip(running, fresh, strict=True))
            ),
            k,
        )

    def chunk_step(c, running: Selection) -> Selection:
        start = c * chunk
        scores = corpus_scores(queries, lax.dynamic_slice_in_dim(corpus, start, chunk))
        indices = start + jnp.arange(chunk, dtype=jnp.int32)
        keys = _masked_keys(scores, indices, corpus_mask)
        return absorb(running, Selection(keys, jnp.broadcast_to(indices, keys.shape), scores))

    running = _empty(batch, k)
    if num_chunks:
        running = lax.fori_loop(0, num_chunks, chunk_step, running)
    if num_chunks * chunk < num_items:
        running = absorb(
            running, _score_items(queries, corpus, num_chunks * chunk, num_items, corpus_mask)
        )
    return as_top_k(running)
