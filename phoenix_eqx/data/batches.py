"""From a `SequenceSplit` to Phoenix batches: training streams and evaluation inputs.

A stream's batch is a pure function of `(seed, step)`: epoch `e` visits the examples in the
permutation drawn from `(seed, e)`, and negatives are drawn from `(seed, step)`. Resuming at a
step therefore replays exactly the batches an uninterrupted run would have seen.
"""

import jax.numpy as jnp
import numpy as np

from ..config import ACTIONS
from ..inputs import RecsysBatch
from .examples import RankingExample, RetrievalExample
from .interactions import SequenceSplit


def make_batch(
    split: SequenceSplit,
    users: np.ndarray,
    ends: np.ndarray,
    candidates: np.ndarray,
    history_seq_len: int,
) -> RecsysBatch:
    """Users' histories (their last `history_seq_len` items before position `ends`, right-aligned:
    padding first) and the given candidate items `[batch, C]` (0 = padding candidate)."""
    data = split.data
    users, ends = np.asarray(users), np.asarray(ends)
    positions = ends[:, None] + np.arange(-history_seq_len, 0)[None, :]
    valid = positions >= 0
    safe = np.maximum(positions, 0)
    history = np.where(valid, split.items[users[:, None], safe], 0)
    actions = np.where(valid[..., None], split.actions[users[:, None], safe], 0.0)
    candidates = np.asarray(candidates)
    return RecsysBatch(
        user_hashes=jnp.asarray(data.user_hashes[users]),
        history_post_hashes=jnp.asarray(data.post_hashes[history]),
        history_author_hashes=jnp.asarray(data.author_hashes[history]),
        history_actions=jnp.asarray(actions, jnp.float32),
        history_product_surface=jnp.asarray(data.item_surface[history]),
        candidate_post_hashes=jnp.asarray(data.post_hashes[candidates]),
        candidate_author_hashes=jnp.asarray(data.author_hashes[candidates]),
        candidate_product_surface=jnp.asarray(data.item_surface[candidates]),
    )


def sample_unseen(
    rng: np.random.Generator, seen: np.ndarray, users: np.ndarray, count: int
) -> np.ndarray:
    """`[len(users), count]` items drawn uniformly (with replacement) among those each user
    never interacted with (`seen` is a `[users, items]` mask whose column 0, padding, counts
    as seen). Raises a ValueError when a user has fewer than `count` unseen items."""
    users = np.asarray(users)
    unseen_counts = (~seen[users]).sum(axis=1)
    if users.size and count > unseen_counts.min():
        row = int(np.argmin(unseen_counts))
        raise ValueError(
            f"count: expected at most the {unseen_counts[row]} items user {users[row]} has not "
            f"seen, got {count}"
        )
    num_items = seen.shape[1] - 1
    items = rng.integers(1, num_items + 1, size=(users.shape[0], count))
    # Redraw the collisions; users see a small fraction of the items, so this ends quickly.
    for _ in range(100):
        bad = seen[users[:, None], items]
        if not bad.any():
            return items
        items[bad] = rng.integers(1, num_items + 1, size=int(bad.sum()))
    # Users who have seen nearly everything: draw their remaining slots from their unseen set.
    for row in np.flatnonzero(seen[users[:, None], items].any(axis=1)):
        bad = seen[users[row], items[row]]
        items[row, bad] = rng.choice(np.flatnonzero(~seen[users[row]]), size=int(bad.sum()))
    return items


class _Stream:
    def __init__(self, split: SequenceSplit, batch_size: int, history_seq_len: int, seed: int):
        self.examples = split.train_examples()
        if batch_size < 1 or batch_size > len(self.examples):
            raise ValueError(
                f"batch_size: expected 1..{len(self.examples)} (the training examples), "
                f"got {batch_size}"
            )
        if history_seq_len < 0:
            raise ValueError(f"history_seq_len: expected >= 0, got {history_seq_len}")
        self.split, self.batch_size, self.history_seq_len, self.seed = (
            split,
            batch_size,
            history_seq_len,
            seed,
        )

    @property
    def steps_per_epoch(self) -> int:
        """Full batches per pass over the examples (the remainder is dropped)."""
        return len(self.examples) // self.batch_size

    def _rows(self, step: int) -> tuple[np.ndarray, np.random.Generator]:
        epoch, index = divmod(step, self.steps_per_epoch)
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.examples))
        rows = self.examples[order[index * self.batch_size : (index + 1) * self.batch_size]]
        return rows, np.random.default_rng([self.seed, epoch, index, 1])


class RetrievalStream(_Stream):
    """Retrieval batches: a user's history up to a training position, that position's item as
    the positive, and `num_negatives` extra negatives drawn uniformly from the corpus.

    The logQ term of an item is the log of its expected count among a batch's columns: the
    other examples' positives draw it with its frequency `p` among training positives, the
    uniform negatives with `1 / num_items`, so `log(batch * p + num_negatives / num_items)`.
    """

    def __init__(
        self,
        split: SequenceSplit,
        batch_size: int,
        history_seq_len: int,
        *,
        num_negatives: int = 0,
        seed: int = 0,
    ):
        super().__init__(split, batch_size, history_seq_len, seed)
        if num_negatives < 0:
            raise ValueError(f"num_negatives: expected >= 0, got {num_negatives}")
        self.num_negatives = num_negatives
        targets = split.items[self.examples[:, 0], self.examples[:, 1]]
        num_items = split.data.num_items
        frequency = np.bincount(targets, minlength=num_items + 1) / len(targets)
        expected = batch_size * frequency + num_negatives / num_items
        with np.errstate(divide="ignore"):
            self.log_q = np.log(expected).astype(np.float32)

    def __call__(self, step: int) -> RetrievalExample:
        rows, rng = self._rows(step)
        users, positions = rows[:, 0], rows[:, 1]
        positives = self.split.items[users, positions]
        data = self.split.data
        negatives = rng.integers(1, data.num_items + 1, size=self.num_negatives)
        return RetrievalExample(
            batch=make_batch(
                self.split, users, positions, positives[:, None], self.history_seq_len
            ),
            positive_log_q=jnp.asarray(self.log_q[positives]),
            negative_post_hashes=jnp.asarray(data.post_hashes[negatives]),
            negative_author_hashes=jnp.asarray(data.author_hashes[negatives]),
            negative_log_q=jnp.asarray(self.log_q[negatives]),
        )


class RankingStream(_Stream):
    """Ranking batches: a user's history up to a training position, and `num_candidates`
    candidates in random slots: that position's item, labelled with its actions, and items the
    user never interacted with, labelled with no action."""

    def __init__(
        self,
        split: SequenceSplit,
        batch_size: int,
        history_seq_len: int,
        num_candidates: int,
        *,
        seed: int = 0,
    ):
        super().__init__(split, batch_size, history_seq_len, seed)
        if num_candidates < 1:
            raise ValueError(f"num_candidates: expected >= 1, got {num_candidates}")
        self.num_candidates = num_candidates
        self.seen = split.seen_matrix()

    def __call__(self, step: int) -> RankingExample:
        rows, rng = self._rows(step)
        users, positions = rows[:, 0], rows[:, 1]
        return ranking_example(
            self.split,
            users,
            positions,
            self.split.items[users, positions],
            self.split.actions[users, positions],
            self.seen,
            self.num_candidates,
            self.history_seq_len,
            rng,
        )


def ranking_example(
    split: SequenceSplit,
    users: np.ndarray,
    ends: np.ndarray,
    positives: np.ndarray,
    positive_actions: np.ndarray,
    seen: np.ndarray,
    num_candidates: int,
    history_seq_len: int,
    rng: np.random.Generator,
) -> RankingExample:
    """One positive (with its actions) and `num_candidates - 1` unseen negatives per user, in
    random slots, with the history before position `ends`."""
    negatives = sample_unseen(rng, seen, users, num_candidates - 1)
    candidates = np.concatenate([positives[:, None], negatives], axis=1)
    labels = np.zeros((users.shape[0], num_candidates, len(ACTIONS)), np.float32)
    labels[:, 0] = positive_actions
    # Random slots, so that no model can learn where the positive sits.
    slots = np.argsort(rng.random(candidates.shape), axis=1)
    candidates = np.take_along_axis(candidates, slots, axis=1)
    labels = np.take_along_axis(labels, slots[..., None], axis=1)
    return RankingExample(
        batch=make_batch(split, users, ends, candidates, history_seq_len),
        labels=jnp.asarray(labels),
    )


def eval_users_batch(split: SequenceSplit, users: np.ndarray, history_seq_len: int) -> RecsysBatch:
    """Test users with their whole training sequence as history and no candidates."""
    users = np.asarray(users)
    empty = np.zeros((users.shape[0], 0), np.int64)
    return make_batch(split, users, split.train_lengths[users], empty, history_seq_len)


def eval_ranking_example(
    split: SequenceSplit, users: np.ndarray, num_candidates: int, history_seq_len: int, seed: int
) -> RankingExample:
    """Each test user's held-out item among `num_candidates - 1` unseen items."""
    users = np.asarray(users)
    return ranking_example(
        split,
        users,
        split.train_lengths[users],
        split.test_items[users],
        split.actions[users, split.train_lengths[users]],
        split.seen_matrix(),
        num_candidates,
        history_seq_len,
        np.random.default_rng([seed, 2]),
    )
