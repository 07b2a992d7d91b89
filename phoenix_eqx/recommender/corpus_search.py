"""Exact top-k of users' dot products over the whole corpus, their own items excluded: what
retrieval serves, validation measures and the ranker trains on.

A score is `dot_scores`: float32 products summed over the embedding in index order, element
by element, so that its value never depends on what is computed beside it. XLA's CPU matmul
does not promise that: the same product comes out an ulp apart as the operands' shapes change
(one user or several, a slice of the corpus or all of it), which would let `recommend` and a
full sort of `score_items` disagree on near ties.

A small corpus is scored whole, then one `lax.top_k` selects (`top_k_unseen`). A large one
(`uses_blocks`) is searched without ever writing a user's score row:
1. tiles of the corpus go through a matmul, and each block of `BLOCK` items keeps the maximum
   of the rows it may return: the padding row and each user's excluded rows are bits
   (`_unusable_bits`, 1/8 byte per row) that the tile reads beside its scores;
2. the blocks with the best maxima, `k` for the winners, one for the padding row's block and
   `k / 4` as a margin, are scored exactly with `dot_scores` and selected from;
3. the result is certified: every usable item of a block not chosen scores at most its
   block's matmul maximum plus the two computations' rounding bound (`rounding_bound`), so
   if the k-th exact score is above that for every block left out, nothing left out could
   enter.
   A batch that fails (near ties at the boundary, non-finite vectors) is scored whole.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Float, Int

# Items per block whose matmul maximum stands for them in the first pass.
BLOCK = 64
# Scores per matmul tile of the first pass (4 MB): measured fastest on a 2-core CPU at 1M items.
TILE_SCORES = 1 << 20
# Users scored together in the exact pass and in the whole-corpus fallback.
EXACT_USERS = 8


def dot_scores(
    users: Float[Array, "batch emb"],
    vectors: Float[Array, "rows emb"] | Float[Array, "batch rows emb"],
) -> Float[Array, "batch rows"]:
    """Every user's dot product with every row of `vectors` (shared `[rows, emb]`, or each
    user's own `[batch, rows, emb]`) in float32: products added in the embedding's order."""
    users = users.astype(jnp.float32)
    vectors = vectors.astype(jnp.float32)
    if vectors.ndim == 2:
        vectors = vectors[None]
    total = users[:, None, 0] * vectors[..., 0]
    for dim in range(1, users.shape[1]):
        total = total + users[:, None, dim] * vectors[..., dim]
    return total


def top_k_unseen(
    scores: Float[Array, "batch rows"], exclude: Int[Array, "batch excluded"], k: int
) -> tuple[Int[Array, "batch k"], Float[Array, "batch k"]]:
    """Each row's `k` best columns, never column 0 (padding) nor the columns in `exclude`.

    Order: descending score, ties to the lower index (`corpus_top_k`'s convention); only
    finite scores are returned, the tail past them holds index -1 and score -inf.

    Exclusions and padding are written into the scores as -inf before one float32
    `lax.top_k` of width `k`: `corpus_top_k`'s integer sort keys make XLA on a CPU sort the
    whole row (about 110 ms per user at 1M items, against under 1 ms for the float top-k), and
    selecting `k + excluded` rows to drop exclusions afterwards widens the selection with the
    history. `lax.top_k` orders floats by their bits, so -0.0 is first made +0.0 (they tie)
    and NaN or +inf -inf (they would rank first): a score that is not finite is never returned.
    """
    batch, num_rows = scores.shape
    scores = _finite_or_minus_inf(scores).at[:, 0].set(-jnp.inf)
    scores = scores.at[jnp.arange(batch)[:, None], exclude].set(-jnp.inf)
    top_scores, indices = lax.top_k(scores, min(k, num_rows))
    if k > num_rows:
        top_scores = jnp.pad(top_scores, ((0, 0), (0, k - num_rows)), constant_values=-jnp.inf)
        indices = jnp.pad(indices, ((0, 0), (0, k - num_rows)))
    return jnp.where(jnp.isfinite(top_scores), indices, -1), top_scores


def top_unseen(
    users: Float[Array, "batch emb"],
    item_vectors: Float[Array, "rows emb"],
    exclude: Int[Array, "batch excluded"],
    k: int,
) -> tuple[Int[Array, "batch k"], Float[Array, "batch k"]]:
    """Each user's `k` best corpus rows by `dot_scores`, never row 0 (padding) nor the rows in
    `exclude`; `top_k_unseen` says the order. Short of items: index -1, score -inf. Exact on
    every path: a large corpus is searched by blocks (the module docstring)."""
    if not uses_blocks(item_vectors.shape[0], k):
        return top_k_unseen(dot_scores(users, item_vectors), exclude, k)
    found = _blocked_top_unseen(users, item_vectors, exclude, k)
    return lax.cond(
        found.certified,
        lambda: (found.indices, found.scores),
        lambda: _whole_corpus_top_unseen(users, item_vectors, exclude, k),
    )


def uses_blocks(num_rows: int, k: int) -> bool:
    """Whether `top_unseen` searches by blocks: when the blocks it scores exactly are at most
    a quarter of the corpus."""
    return 4 * _blocks_scored(num_rows, k) * BLOCK <= num_rows


def rounding_bound(
    users: Float[Array, "batch emb"], max_item_norm: Float[Array, ""]
) -> Float[Array, " batch"]:
    """How far apart two float32 computations of one dot product may land, whatever their
    order of additions: each is within `gamma_n * sum |u_i v_i|` of the exact value
    (`gamma_n = n eps / (1 - n eps)`, Higham's bound, products included), and
    `sum |u_i v_i| <= |u| |v|`. Doubled again as a margin."""
    dims = users.shape[1]
    unit = jnp.finfo(jnp.float32).eps / 2
    gamma = dims * unit / (1 - dims * unit)
    return 4 * gamma * jnp.linalg.norm(users.astype(jnp.float32), axis=1) * max_item_norm


class _Found(NamedTuple):
    indices: Int[Array, "batch k"]
    scores: Float[Array, "batch k"]
    certified: jax.Array  # bool scalar: the whole batch's result is exact


def _finite_or_minus_inf(scores: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
    """-0.0 as +0.0 (they tie, and `lax.top_k` orders by bits) and what is not finite as -inf."""
    scores = jnp.where(scores == 0, 0.0, scores)
    return jnp.where(jnp.isfinite(scores), scores, -jnp.inf)


def _blocks_scored(num_rows: int, k: int) -> int:
    """Blocks scored exactly: `k` for the winners, one for the block of the padding row and
    `k / 4` as the certificate's margin."""
    return min(k + k // 4 + 1, -(-num_rows // BLOCK))


def _unusable_bits(exclude: Int[Array, "batch excluded"], num_rows: int) -> jax.Array:
    """`[batch, ceil(num_rows / 32)]` uint32 words whose bit `r % 32` of word `r // 32` is set
    for the padding row 0 and each row in `exclude`: 1/8 byte per corpus row and user, so a
    tile reads its users' exclusions beside its scores."""
    batch = exclude.shape[0]
    rows = jnp.sort(jnp.pad(exclude, ((0, 0), (1, 0))), axis=1)
    # Each row once (the bits are added): repeats go to a word past the end and are dropped.
    repeated = jnp.pad(rows[:, 1:] == rows[:, :-1], ((0, 0), (1, 0)))
    num_words = -(-num_rows // 32)
    words = jnp.where(repeated, num_words, rows >> 5)
    bits = jnp.left_shift(jnp.uint32(1), (rows & 31).astype(jnp.uint32))
    return (
        jnp.zeros((batch, num_words), jnp.uint32)
        .at[jnp.arange(batch)[:, None], words]
        .add(bits, mode="drop")
    )


def _is_set(words: jax.Array, rows: Int[Array, "*shape"]) -> jax.Array:
    """Whether each row's bit is set in one user's `_unusable_bits` words."""
    word = words[jnp.minimum(rows >> 5, words.shape[-1] - 1)]
    return ((word >> (rows & 31).astype(jnp.uint32)) & 1).astype(bool)


def _block_maxima(
    users: Float[Array, "batch emb"], item_vectors: Float[Array, "rows emb"], unusable: jax.Array
) -> Float[Array, "batch blocks"]:
    """Every block's largest finite matmul score per user over the rows it may return (-inf
    if none), tile by tile."""
    batch, num_rows = users.shape[0], item_vectors.shape[0]
    tile = max(TILE_SCORES // batch // BLOCK, 1) * BLOCK

    def tile_maxima(start: int | jax.Array, width: int):
        vectors = lax.dynamic_slice_in_dim(item_vectors, start, width).astype(jnp.float32)
        scores = jnp.dot(users.astype(jnp.float32), vectors.T, precision=lax.Precision.HIGHEST)
        words = lax.dynamic_slice_in_dim(unusable, start // 32, -(-width // 32), axis=1)
        skipped = (words[:, :, None] >> jnp.arange(32, dtype=jnp.uint32)) & 1
        skipped = skipped.astype(bool).reshape(batch, -1)[:, :width]
        scores = jnp.where(skipped, -jnp.inf, _finite_or_minus_inf(scores))
        scores = jnp.pad(scores, ((0, 0), (0, -width % BLOCK)), constant_values=-jnp.inf)
        return scores.reshape(batch, -1, BLOCK).max(axis=2)

    tile = min(tile, num_rows // BLOCK * BLOCK)
    whole_tiles = num_rows // tile
    maxima = lax.map(lambda index: tile_maxima(index * tile, tile), jnp.arange(whole_tiles))
    maxima = jnp.moveaxis(maxima, 0, 1).reshape(batch, -1)
    if num_rows > whole_tiles * tile:
        rest = tile_maxima(whole_tiles * tile, num_rows - whole_tiles * tile)
        maxima = jnp.concatenate([maxima, rest], axis=1)
    return maxima


def _max_norm(item_vectors: Float[Array, "rows emb"]) -> Float[Array, ""]:
    """The largest item norm, inf if any vector is not finite: one pass of its own, since
    inside `_block_maxima`'s tiles it slowed the matmul's loop threefold."""
    norms = jnp.sqrt(jnp.sum(jnp.square(item_vectors.astype(jnp.float32)), axis=1))
    return jnp.where(jnp.isfinite(norms), norms, jnp.inf).max()


def _blocked_top_unseen(
    users: Float[Array, "batch emb"],
    item_vectors: Float[Array, "rows emb"],
    exclude: Int[Array, "batch excluded"],
    k: int,
) -> _Found:
    num_rows = item_vectors.shape[0]
    unusable = _unusable_bits(exclude, num_rows)
    maxima = _block_maxima(users, item_vectors, unusable)
    chosen = _blocks_scored(num_rows, k)
    blocks = lax.top_k(maxima, chosen)[1]
    # The best maximum among the blocks left out bounds every usable item in them. (Reading
    # it as one more column of the top-k made XLA's CPU top-k 50% slower.)
    batch_rows = jnp.arange(users.shape[0])[:, None]
    taken = jnp.zeros(maxima.shape, bool).at[batch_rows, blocks].set(True)
    left_out = jnp.where(taken, -jnp.inf, maxima).max(axis=1)
    # Rows in corpus order, so that `lax.top_k`'s ties go to the lower row.
    blocks = jnp.sort(blocks, axis=1)

    def exact(user, user_blocks, user_unusable):
        rows = (user_blocks[:, None] * BLOCK + jnp.arange(BLOCK)).reshape(-1)
        scores = dot_scores(user[None], item_vectors[jnp.minimum(rows, num_rows - 1)])[0]
        skipped = _is_set(user_unusable, rows) | (rows >= num_rows)
        top_scores, slots = lax.top_k(jnp.where(skipped, -jnp.inf, _finite_or_minus_inf(scores)), k)
        return rows[slots], top_scores

    rows, top_scores = lax.map(
        lambda args: exact(*args), (users, blocks, unusable), batch_size=EXACT_USERS
    )
    max_item_norm = _max_norm(item_vectors)
    bound = left_out + rounding_bound(users, max_item_norm)
    certified = jnp.all(top_scores[:, k - 1] > bound) & jnp.isfinite(max_item_norm)
    return _Found(jnp.where(jnp.isfinite(top_scores), rows, -1), top_scores, certified)


def _whole_corpus_top_unseen(
    users: Float[Array, "batch emb"],
    item_vectors: Float[Array, "rows emb"],
    exclude: Int[Array, "batch excluded"],
    k: int,
) -> tuple[Int[Array, "batch k"], Float[Array, "batch k"]]:
    """Every score, a few users at a time: the exact path a failed certificate falls back to."""

    def one_user(user, user_exclude):
        indices, scores = top_k_unseen(dot_scores(user[None], item_vectors), user_exclude[None], k)
        return indices[0], scores[0]

    return lax.map(lambda args: one_user(*args), (users, exclude), batch_size=EXACT_USERS)
