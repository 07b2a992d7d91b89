"""Two-stage serving as Phoenix serves: retrieval over the whole corpus (the user's own items
excluded), then the ranker re-scores what it found with candidate isolation: the residual
ranker adds its weighted action logits to retrieval's logit, the BCE ranker orders by a
weighted sum of action probabilities."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from ..training.models import TrainableRanker, TrainableRetriever
from .batches import padded_rows, recsys_batch
from .cooccurrence import CooccurrencePrior
from .corpus_search import dot_scores, top_unseen, uses_blocks
from .options import FitOptions

# Users per compiled call at most; a smaller call rounds up to a power of two (one user: one
# row, no padding), so that at most nine compilations serve every call.
EVAL_CHUNK = 256
# Bytes of float32 scores one call may hold ([chunk, rows]) when the corpus is scored whole:
# with 1M items a chunk of 256 users would write 1 GiB per call, and on a 2-core CPU the time
# per user was measured to grow past about 8 users there (docs/scaling-costs.md). A corpus
# searched by blocks never holds a score row, and takes full chunks.
MAX_SCORE_BYTES = 32 << 20


def chunk_size(num_users: int, num_rows: int, k: int) -> int:
    """Users per compiled call: `num_users` rounded up to a power of two, at most
    `EVAL_CHUNK` and, when the corpus is scored whole, at most what keeps the scores within
    `MAX_SCORE_BYTES`."""
    fits = max(MAX_SCORE_BYTES // (4 * num_rows), 1)
    cap = EVAL_CHUNK
    if not uses_blocks(num_rows, k):
        cap = min(cap, 1 << (fits.bit_length() - 1))
    return min(cap, 1 << max(num_users - 1, 0).bit_length())


def residual_scores(
    retrieval_logits: Float[Array, "*batch candidates"],
    action_logits: Float[Array, "*batch candidates actions"],
    action_weights: Float[Array, " actions"],
) -> Float[Array, "*batch candidates"]:
    """The residual ranker's score: retrieval's logit plus the ranker's correction
    `sum_a w_a * logit_a`, in float32. Serving orders by it and the listwise loss trains it,
    so the ranker learns the score it is served by. No sigmoid: a saturated score would tie
    candidates that retrieval tells apart."""
    correction = action_logits.astype(jnp.float32) @ action_weights.astype(jnp.float32)
    return retrieval_logits.astype(jnp.float32) + correction


@eqx.filter_jit
def two_stage(
    retriever: TrainableRetriever,
    ranker: TrainableRanker | None,
    item_vectors: Float[Array, "rows emb"],
    item_hashes: Int[Array, "rows item_hashes"],
    users: Int[Array, "batch user_hashes"],
    histories: Int[Array, "batch history"],
    history_actions: Int[Array, "batch history"] | None,
    exclude: Int[Array, "batch excluded"],
    action_weights: Float[Array, " actions"],
    num_retrieved: int,
    residual: bool,
    prior: CooccurrencePrior | None = None,
    searched: tuple[Int[Array, "batch searched"], Float[Array, "batch searched"]] | None = None,
) -> tuple[Int[Array, "batch retrieved"], Float[Array, "batch retrieved"]]:
    """Retrieve `num_retrieved` rows, then order them by the ranker: with `residual`, by
    `residual_scores` of retrieval's logit (the dot product over the retriever's temperature,
    the logit it was trained with); otherwise by its weighted action probabilities; with a
    `prior`, plus its weight times the candidate's co-occurrence prior. Without a ranker
    the retrieval order is final (dot products as scores), or with a `prior` the retrieved
    rows and the prior's suggestions (`CooccurrencePrior.suggestions`) are ordered by
    retrieval's logit plus the weighted prior: `num_retrieved + prior.num_suggested` rows, -1 for
    none. The ranker reads `history_actions` (`recsys_batch`; None: every item engaged),
    retrieval never does. Callers keep the first `k`: one compilation serves every `k`.

    A residual ranker whose head is zero serves retrieval's order exactly: dividing by the
    temperature never reverses two scores (it may tie them), and `lax.top_k` breaks ties
    to the lower slot, which retrieval's already sorted list makes the better-retrieved one.

    `searched`: retrieval's search of these users already made by the same retriever (its
    rows and dot products, `num_retrieved` deep), used instead of searching again."""
    empty = jnp.zeros((histories.shape[0], 0), jnp.int32)
    user_vectors = retriever.user_vectors(recsys_batch(users, histories, empty, item_hashes))
    if searched is None:
        searched = top_unseen(user_vectors, item_vectors, exclude, num_retrieved)
    retrieved, retrieval_scores = searched
    if ranker is None and prior is None:
        return retrieved, retrieval_scores
    if ranker is None:
        suggested = prior.suggestions(histories, exclude, retrieved)
        # The search's scores are `dot_scores` already: only the suggestions need theirs.
        dots = jnp.concatenate(
            [retrieval_scores, dot_scores(user_vectors, item_vectors[suggested])], axis=1
        )
        retrieved = jnp.concatenate([retrieved, jnp.where(suggested > 0, suggested, -1)], 1)
        candidates = jnp.maximum(retrieved, 0)
        scores = dots / retriever.temperature + _weighted_prior(prior, histories, candidates)
        scores = jnp.where(retrieved >= 0, scores, -jnp.inf)
        top_scores, slots = jax.lax.top_k(scores, retrieved.shape[1])
        return jnp.take_along_axis(retrieved, slots, axis=1), top_scores
    candidates = jnp.maximum(retrieved, 0)
    logits = ranker(recsys_batch(users, histories, candidates, item_hashes, history_actions))
    if residual:
        scores = residual_scores(retrieval_scores / retriever.temperature, logits, action_weights)
    else:
        scores = jax.nn.sigmoid(logits.astype(jnp.float32)) @ action_weights
    if prior is not None:
        scores = scores + _weighted_prior(prior, histories, candidates)
    scores = jnp.where(retrieved >= 0, scores, -jnp.inf)
    top_scores, slots = jax.lax.top_k(scores, num_retrieved)
    return jnp.take_along_axis(retrieved, slots, axis=1), top_scores


def _weighted_prior(
    prior: CooccurrencePrior,
    histories: Int[Array, "batch history"],
    candidates: Int[Array, "batch candidates"],
) -> Float[Array, "batch candidates"]:
    """The prior times its weight; at weight 0 (the order fit re-sorts per weight) not
    computed."""
    return jax.lax.cond(
        prior.weight > 0,
        lambda: prior.weight * prior(histories, candidates),
        lambda: jnp.zeros(candidates.shape, jnp.float32),
    )


@eqx.filter_jit
def retrieval_scores(
    retriever: TrainableRetriever,
    item_vectors: Float[Array, "rows emb"],
    item_hashes: Int[Array, "rows item_hashes"],
    users: Int[Array | np.ndarray, "batch user_hashes"],
    histories: Int[Array | np.ndarray, "batch history"],
) -> Float[Array, "batch rows"]:
    """Dot products of the users' vectors with every corpus row (row 0, padding, included)."""
    empty = jnp.zeros((histories.shape[0], 0), jnp.int32)
    return dot_scores(
        retriever.user_vectors(recsys_batch(users, histories, empty, item_hashes)), item_vectors
    )


def chunk_bounds(num_users: int) -> list[tuple[int, int]]:
    """`(start, stop)` of `EVAL_CHUNK`-user chunks."""
    return [
        (start, min(start + EVAL_CHUNK, num_users)) for start in range(0, num_users, EVAL_CHUNK)
    ]


def rank_in_chunks(
    retriever: TrainableRetriever,
    ranker: TrainableRanker | None,
    item_vectors: Float[Array, "rows emb"],
    item_hashes: Int[Array, "rows item_hashes"],
    users: np.ndarray,
    histories: np.ndarray,
    history_actions: np.ndarray | None,
    excluded: np.ndarray,
    options: FitOptions,
    k: int,
    prior: CooccurrencePrior | None = None,
    searched: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """`two_stage`'s top `k` over users in fixed-size chunks, as numpy arrays, serving as
    `options` say (`num_retrieved`, `action_weights`, `residual_ranker`, and whether the
    ranker reads `history_actions`, the histories' action masks: `ranker_history_actions`),
    with `prior`'s scores (and, without a ranker, its suggestions) if given. `searched`:
    these users' retrieval search by the same retriever (`[users, depth]` rows and dot
    products, as this function returns without ranker and prior), reused instead of searching
    again where it is at least as deep as this call's."""
    num_users = histories.shape[0]
    # Without a ranker or prior retrieval's order is final, and the exact search's top `k` is
    # its top `num_retrieved`'s first `k` (same ties to the lower row) for a fraction of the
    # cost. Without a ranker the prior's suggestions join what retrieval found.
    if ranker is None and prior is None:
        depth = k
    elif ranker is None:
        depth = max(options.num_retrieved, k - prior.num_suggested)
    else:
        depth = max(options.num_retrieved, k)
    num_retrieved = min(depth, item_vectors.shape[0] - 1)
    if searched is not None and searched[0].shape[1] < num_retrieved:
        searched = None  # too shallow for this depth: search again
    chunk = chunk_size(num_users, item_vectors.shape[0], num_retrieved)
    weights = jnp.asarray(options.weight_vector())
    if options.ranker_history_actions == "engaged":
        history_actions = None
    indices, scores = [], []
    for start in range(0, num_users, chunk):
        rows = np.arange(start, min(start + chunk, num_users))
        padded = padded_rows(rows, chunk, int(rows[0]))
        found, found_scores = two_stage(
            retriever,
            ranker,
            item_vectors,
            item_hashes,
            jnp.asarray(users[padded]),
            jnp.asarray(histories[padded]),
            None if history_actions is None else jnp.asarray(history_actions[padded]),
            jnp.asarray(excluded[padded]),
            weights,
            num_retrieved,
            options.residual_ranker,
            prior,
            None
            if searched is None
            else tuple(jnp.asarray(part[padded, :num_retrieved]) for part in searched),
        )
        indices.append(np.asarray(found)[: rows.size, :k])
        scores.append(np.asarray(found_scores)[: rows.size, :k])
    return np.concatenate(indices), np.concatenate(scores)
