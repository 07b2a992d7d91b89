"""The co-occurrence prior: how strongly a candidate goes with the user's latest items in the
training log, the score of the recent item-kNN baseline.

Retrieval and the ranker read the history through learned embeddings; a neighbour table
counts co-occurrences directly, which on small logs (MovieLens-100K: 943 users) and large
catalogues (a million items, each a target a few times) the embeddings have too few
examples to learn. The served score adds the prior, times a weight that validation chooses
(0 turns it off): to the ranker's score of each retrieved candidate, or, served without a
ranker, to retrieval's logit of each retrieved candidate and of the prior's own suggestions
(the latest items' nearest neighbours), which retrieval alone might never reach.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from ..training.baselines import NeighbourLists, neighbour_lists

# The recent item-kNN baseline's settings, chosen on MovieLens-1M and -100K validation
# (`training.baselines.leave_two_out_baselines`): the latest 20 items, the item `a` steps
# before the last weighted 0.7 ** a; 200 neighbours per item; shrinkage 10.
WINDOW = 20
DECAY = 0.7
NEIGHBOURS = 200
SHRINKAGE = 10.0
# What the prior suggests beside retrieval's candidates: the 20 nearest neighbours of each
# of the latest 3 items (the benchmarks' recent item-kNN reads the latest 3).
SUGGESTED_FROM = 3
SUGGESTED_PER_ITEM = 20


class CooccurrencePrior(eqx.Module):
    """Each item row's most co-consumed rows and their shrunk cosine similarities
    (`training.baselines.neighbour_lists`), kept as compressed rows in item order (a row is
    searched, never expanded: no array grows with the catalogue times the users), and the
    weight the served score gives the prior."""

    starts: Int[Array, " rows_plus_one"]
    neighbours: Int[Array, " pairs"]
    similarities: Float[Array, " pairs"]
    weight: Float[Array, ""]
    longest: int = eqx.field(static=True)

    def __init__(self, lists: NeighbourLists, weight: float = 0.0):
        starts = np.asarray(lists.starts, np.int64)
        ids, similarities = np.asarray(lists.ids), np.asarray(lists.similarities)
        if ids.shape != similarities.shape or starts.ndim != 1 or starts[-1] != ids.size:
            raise ValueError(
                f"lists: expected ids and similarities of one length, starts ending at it, "
                f"got {ids.shape}, {similarities.shape} and starts ending at {starts[-1]}"
            )
        counts = np.diff(starts)
        rows = np.repeat(np.arange(counts.size), counts)
        # The binary search needs each row in item order.
        if np.any((np.diff(ids) <= 0) & (rows[1:] == rows[:-1])):
            raise ValueError("lists: expected each row's ids increasing, got a row out of order")
        # A last (0, 0) entry keeps every clipped index valid, also with no pairs at all.
        self.starts = jnp.asarray(starts, jnp.int32)
        self.neighbours = jnp.asarray(np.append(ids, 0), jnp.int32)
        self.similarities = jnp.asarray(np.append(similarities, 0.0), jnp.float32)
        self.weight = _checked_weight(weight)
        self.longest = int(counts.max(initial=0))

    @classmethod
    def of(
        cls,
        sequences: list[np.ndarray],
        num_items: int,
        weight: float = 0.0,
        window: int = 0,
    ) -> "CooccurrencePrior":
        """The prior of a log: `sequences[u]` is user `u`'s item rows (`1..num_items`) in
        time order; `window`: `neighbour_lists`' (0: whole sequences co-occur)."""
        return cls(neighbour_lists(sequences, num_items, NEIGHBOURS, SHRINKAGE, window), weight)

    def with_weight(self, weight: float) -> "CooccurrencePrior":
        """The same neighbours, served with `weight`."""
        return eqx.tree_at(lambda prior: prior.weight, self, _checked_weight(weight))

    def __call__(
        self,
        histories: Int[Array, "batch history"],
        candidates: Int[Array, "batch candidates"],
    ) -> Float[Array, "batch candidates"]:
        """Each candidate row's prior: the sum, over its neighbours, of similarity times the
        neighbour's recency weight in the history (`histories`: left-aligned windows, 0
        after; candidate row 0 scores 0). Unweighted: `weight` is the caller's to apply."""
        latest, recency = _latest(histories, WINDOW)
        begin = self.starts[candidates][:, :, None]
        end = self.starts[candidates + 1][:, :, None]
        wanted = latest[:, None, :]
        # Lower bound of each history item in each candidate's row, a fixed number of halvings.
        low = jnp.broadcast_to(begin, begin.shape[:2] + wanted.shape[2:])
        high = jnp.broadcast_to(end, low.shape)
        last = self.neighbours.shape[0] - 1
        for _ in range(self.longest.bit_length()):
            searching = low < high
            middle = (low + high) // 2
            below = self.neighbours[jnp.minimum(middle, last)] < wanted
            low = jnp.where(searching & below, middle + 1, low)
            high = jnp.where(searching & ~below, middle, high)
        slot = jnp.minimum(low, last)
        found = (low < end) & (self.neighbours[slot] == wanted)
        similarity = jnp.where(found, self.similarities[slot], 0.0)
        return jnp.sum(similarity * recency[:, None, :], axis=-1)

    @property
    def num_suggested(self) -> int:
        """How many rows `suggestions` returns per user."""
        return SUGGESTED_FROM * min(SUGGESTED_PER_ITEM, max(self.longest, 1))

    def suggestions(
        self,
        histories: Int[Array, "batch history"],
        exclude: Int[Array, "batch excluded"],
        taken: Int[Array, "batch taken"],
    ) -> Int[Array, "batch suggested"]:
        """The `SUGGESTED_PER_ITEM` nearest neighbours of each of the latest `SUGGESTED_FROM`
        items, each row once, none in `exclude` or `taken`; 0 where none is left."""
        latest, _ = _latest(histories, SUGGESTED_FROM)
        width = max(self.longest, 1)
        begin = self.starts[latest][:, :, None]
        slots = begin + jnp.arange(width)
        inside = slots < self.starts[latest + 1][:, :, None]
        slots = jnp.minimum(slots, self.neighbours.shape[0] - 1)
        strength = jnp.where(inside, self.similarities[slots], -1.0)
        strongest, picked = jax.lax.top_k(strength, self.num_suggested // SUGGESTED_FROM)
        rows = jnp.take_along_axis(self.neighbours[slots], picked, axis=-1)
        rows = jnp.where(strongest > 0, rows, 0).reshape(histories.shape[0], -1)
        rows = jnp.sort(rows, axis=1)
        repeated = jnp.concatenate(
            [jnp.zeros_like(rows[:, :1], bool), rows[:, 1:] == rows[:, :-1]], axis=1
        )
        known = jnp.concatenate([exclude, taken], axis=1)
        unwanted = repeated | jnp.any(rows[:, :, None] == known[:, None, :], axis=-1)
        return jnp.where(unwanted, 0, rows)


def _latest(
    histories: Int[Array, "batch history"], count: int
) -> tuple[Int[Array, "batch count"], Float[Array, "batch count"]]:
    """Each left-aligned window's latest `count` items, newest first (0 past its start), and
    their recency weights, `DECAY ** age` (0 where no item)."""
    lengths = jnp.sum(histories > 0, axis=1, keepdims=True)
    age = jnp.arange(count)[None, :]
    real = age < lengths
    items = jnp.take_along_axis(histories, jnp.maximum(lengths - 1 - age, 0), axis=1)
    items = jnp.where(real, items, 0)
    return items, jnp.where(real, DECAY ** age.astype(jnp.float32), 0.0)


def _checked_weight(weight: float) -> Float[Array, ""]:
    if not np.isfinite(weight) or weight < 0:
        raise ValueError(f"weight: expected a finite number >= 0, got {weight}")
    return jnp.asarray(weight, jnp.float32)


def prior_scores(
    prior: CooccurrencePrior, histories: np.ndarray, candidates: np.ndarray, chunk: int = 256
) -> np.ndarray:
    """`prior(histories, candidates)` in chunks of users, as numpy (candidate rows below 0,
    none found, score 0)."""
    scored = []
    for start in range(0, histories.shape[0], chunk):
        stop = min(start + chunk, histories.shape[0])
        scored.append(
            np.asarray(
                _jitted_prior(
                    prior,
                    jnp.asarray(histories[start:stop]),
                    jnp.asarray(np.maximum(candidates[start:stop], 0)),
                )
            )
        )
    return np.concatenate(scored)


@jax.jit
def _jitted_prior(prior, histories, candidates):
    return prior(histories, candidates)
