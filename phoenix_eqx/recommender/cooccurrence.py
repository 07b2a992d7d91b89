"""The second stage's co-occurrence prior: how strongly a candidate goes with the user's latest
items in the training log, the score of the recent item-kNN baseline.

Retrieval and the ranker read the history through learned embeddings; a neighbour table
counts co-occurrences directly, which on small logs (MovieLens-100K: 943 users) the
embeddings have too few examples to learn. The served score adds the prior, times a weight
that validation chooses (0 turns it off), to the ranker's score of each retrieved candidate.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from ..training.baselines import item_neighbours

# The recent item-kNN baseline's settings, chosen on MovieLens-1M and -100K validation
# (`training.baselines.leave_two_out_baselines`): the latest 20 items, the item `a` steps
# before the last weighted 0.7 ** a; 200 neighbours per item; shrinkage 10.
WINDOW = 20
DECAY = 0.7
NEIGHBOURS = 200
SHRINKAGE = 10.0


class CooccurrencePrior(eqx.Module):
    """Each item row's most co-consumed rows and their shrunk cosine similarities
    (`training.baselines.item_neighbours`), and the weight the served score gives the prior."""

    neighbours: Int[Array, "rows neighbours"]
    similarities: Float[Array, "rows neighbours"]
    weight: Float[Array, ""]

    def __init__(
        self,
        neighbours: Int[Array | np.ndarray, "rows neighbours"],
        similarities: Float[Array | np.ndarray, "rows neighbours"],
        weight: float = 0.0,
    ):
        if np.shape(neighbours) != np.shape(similarities) or np.ndim(neighbours) != 2:
            raise ValueError(
                f"similarities: expected the 2-D shape of neighbours {np.shape(neighbours)}, "
                f"got {np.shape(similarities)}"
            )
        if not np.isfinite(weight) or weight < 0:
            raise ValueError(f"weight: expected a finite number >= 0, got {weight}")
        self.neighbours = jnp.asarray(neighbours, jnp.int32)
        self.similarities = jnp.asarray(similarities, jnp.float32)
        self.weight = jnp.asarray(weight, jnp.float32)

    @classmethod
    def of(cls, sequences: list[np.ndarray], num_items: int, weight: float = 0.0):
        """The prior of a log: `sequences[u]` is user `u`'s item rows (`1..num_items`)."""
        ids, similarities = item_neighbours(sequences, num_items, NEIGHBOURS, SHRINKAGE)
        return cls(ids, similarities, weight)

    def with_weight(self, weight: float) -> "CooccurrencePrior":
        """The same neighbours, served with `weight`."""
        return CooccurrencePrior(self.neighbours, self.similarities, weight)

    def __call__(
        self,
        histories: Int[Array, "batch history"],
        candidates: Int[Array, "batch candidates"],
    ) -> Float[Array, "batch candidates"]:
        """Each candidate row's prior: the sum, over its neighbours, of similarity times the
        neighbour's recency weight in the history (`histories`: left-aligned windows, 0
        after; candidate row 0 scores 0). Unweighted: `weight` is the caller's to apply."""
        batch, width = histories.shape
        real = histories > 0
        age = jnp.sum(real, axis=1, keepdims=True) - 1 - jnp.arange(width)[None, :]
        recency = jnp.where(real & (age < WINDOW), DECAY ** jnp.maximum(age, 0), 0.0)
        rows = jnp.arange(batch)[:, None]
        # A dense profile per user: the prior is built only for catalogues that keep it small.
        profile = jnp.zeros((batch, self.neighbours.shape[0]), jnp.float32)
        profile = profile.at[rows, histories].add(recency.astype(jnp.float32))
        profile = profile.at[:, 0].set(0.0)
        neighbour_weights = profile[rows[:, :, None], self.neighbours[candidates]]
        return jnp.sum(neighbour_weights * self.similarities[candidates], axis=-1)


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
