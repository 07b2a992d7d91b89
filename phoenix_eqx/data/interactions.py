"""Interaction logs mapped to Phoenix features, and their leave-last-out split.

An `InteractionData` holds (user, item, rating, timestamp) rows plus, for every user and item,
the ids its hashes look up in the `HashEmbeddingTables` (0 = padding). `leave_last_out` orders
each user's interactions by time and holds out the last one for testing, or (`held_out=2`)
the last for testing and the second-last for validation.
"""

import dataclasses
from typing import Literal

import numpy as np

from ..config import ACTIONS

# Explicit ratings become engagement actions: any rating is a click, a liked item a favorite.
RATING_ACTIONS: dict[str, tuple[float, float]] = {
    "favorite_score": (4.0, np.inf),
    "repost_score": (5.0, np.inf),
    "click_score": (-np.inf, np.inf),
    "dwell_score": (3.0, np.inf),
    "not_interested_score": (-np.inf, 2.0),
}


def rating_actions(ratings: np.ndarray, num_actions: int = len(ACTIONS)) -> np.ndarray:
    """Multi-hot actions `[n, num_actions]` (float32) of ratings, per `RATING_ACTIONS`."""
    ratings = np.asarray(ratings, np.float64)
    actions = np.zeros((*ratings.shape, num_actions), np.float32)
    for name, (low, high) in RATING_ACTIONS.items():
        index = ACTIONS.index(name)
        if index < num_actions:
            actions[..., index] = (ratings >= low) & (ratings <= high)
    return actions


def _check_table(name: str, table: np.ndarray, rows: int, num_rows: int) -> None:
    if table.ndim != 2 or table.shape[0] != rows or table.shape[1] < 1:
        raise ValueError(f"{name}: expected shape ({rows}, hashes), got {table.shape}")
    if np.any(table[0] != 0):
        raise ValueError(f"{name}: expected row 0 (padding) to be all zeros")
    if table.size and (table.min() < 0 or table.max() >= num_rows):
        raise ValueError(
            f"{name}: expected ids in [0, {num_rows}), got [{table.min()}, {table.max()}]"
        )
    if np.any(table[1:, 0] == 0):
        raise ValueError(f"{name}: expected a non-zero first hash for every real entity")


@dataclasses.dataclass(frozen=True)
class InteractionData:
    """Explicit-feedback interactions and the Phoenix feature ids of users and items.

    Users are `1..num_users` and items `1..num_items` (0 is padding everywhere). Row `u` of
    `user_hashes` holds the user table ids of user `u`; `post_hashes` / `author_hashes` /
    `item_surface` likewise for items. The `num_*_rows` give the table sizes.
    """

    users: np.ndarray
    items: np.ndarray
    ratings: np.ndarray
    timestamps: np.ndarray
    user_hashes: np.ndarray
    post_hashes: np.ndarray
    author_hashes: np.ndarray
    item_surface: np.ndarray
    num_user_rows: int
    num_post_rows: int
    num_author_rows: int
    num_surfaces: int

    def __post_init__(self):
        n = self.users.shape[0]
        for name in ("items", "ratings", "timestamps"):
            shape = getattr(self, name).shape
            if shape != (n,):
                raise ValueError(f"{name}: expected shape ({n},) like users, got {shape}")
        _check_table("user_hashes", self.user_hashes, self.user_hashes.shape[0], self.num_user_rows)
        num_items = self.post_hashes.shape[0]
        _check_table("post_hashes", self.post_hashes, num_items, self.num_post_rows)
        _check_table("author_hashes", self.author_hashes, num_items, self.num_author_rows)
        if self.item_surface.shape != (num_items,):
            raise ValueError(
                f"item_surface: expected shape ({num_items},), got {self.item_surface.shape}"
            )
        for name, ids, count in (
            ("users", self.users, self.num_users),
            ("items", self.items, self.num_items),
        ):
            if n and (ids.min() < 1 or ids.max() > count):
                raise ValueError(
                    f"{name}: expected ids in [1, {count}], got [{ids.min()}, {ids.max()}]"
                )

    @property
    def num_users(self) -> int:
        return self.user_hashes.shape[0] - 1

    @property
    def num_items(self) -> int:
        return self.post_hashes.shape[0] - 1

    @property
    def num_interactions(self) -> int:
        return self.users.shape[0]


Stage = Literal["validation", "test"]


def _check_held_out(held_out: int) -> None:
    if held_out not in (1, 2):
        raise ValueError(f"held_out: expected 1 or 2, got {held_out!r}")


@dataclasses.dataclass(frozen=True)
class SequenceSplit:
    """Each user's interactions in time order, the last `held_out` of them held out.

    `items[u, :lengths[u]]` is user `u`'s chronological sequence (zero-padded after), `actions`
    its multi-hot actions. With `held_out=1` (leave-last-out) the last item is the test target;
    with `held_out=2` (leave-two-out, the protocol of the published MovieLens-1M results) the
    last is the test target and the second-last the validation target. The items before them
    (`train_lengths[u]` of them) are for training.

    Users with at most `held_out` interactions are left out entirely: no training items and no
    targets (target 0), so that training, validation and test cover the same users.
    """

    data: InteractionData
    items: np.ndarray
    actions: np.ndarray
    lengths: np.ndarray
    held_out: int = 1

    def __post_init__(self):
        _check_held_out(self.held_out)

    @property
    def evaluated(self) -> np.ndarray:
        """Bool per user: has training items and targets (more than `held_out` items)."""
        return self.lengths > self.held_out

    @property
    def train_lengths(self) -> np.ndarray:
        return np.where(self.evaluated, self.lengths - self.held_out, 0)

    def history_lengths(self, stage: Stage) -> np.ndarray:
        """Per user, the number of items before the `stage` target (its position in `items`),
        0 for users left out. For `"test"` under leave-two-out, this includes the validation
        item: the model sees it as history when predicting the test item."""
        if stage == "test":
            return np.where(self.evaluated, self.lengths - 1, 0)
        if stage == "validation" and self.held_out == 2:
            return self.train_lengths
        raise ValueError(
            f"stage: expected 'test' or (with held_out=2) 'validation', got {stage!r} "
            f"with held_out={self.held_out}"
        )

    def targets(self, stage: Stage) -> np.ndarray:
        """Per user, the held-out item of `stage` (`"validation"` or `"test"`), 0 if none."""
        positions = self.history_lengths(stage)
        return np.where(self.evaluated, self.items[np.arange(self.items.shape[0]), positions], 0)

    @property
    def test_items(self) -> np.ndarray:
        return self.targets("test")

    @property
    def validation_items(self) -> np.ndarray:
        return self.targets("validation")

    @property
    def test_users(self) -> np.ndarray:
        """Users with held-out items, ascending."""
        return np.flatnonzero(self.evaluated)

    def train_examples(self) -> np.ndarray:
        """`[n, 2]` (user, position) pairs: predict `items[user, position]` from the items
        before it, for every training position with at least one item before it."""
        rows = [
            np.stack([np.full(length - 1, user), np.arange(1, length)], axis=1)
            for user, length in enumerate(self.train_lengths)
            if length >= 2
        ]
        return np.concatenate(rows).astype(np.int64) if rows else np.zeros((0, 2), np.int64)

    def _prefix_matrix(self, lengths: np.ndarray) -> np.ndarray:
        """Dense bool `[num_users + 1, num_items + 1]`: item among the user's first `lengths`."""
        matrix = np.zeros((self.data.num_users + 1, self.data.num_items + 1), bool)
        in_prefix = np.arange(self.items.shape[1])[None, :] < lengths[:, None]
        users = np.broadcast_to(np.arange(self.items.shape[0])[:, None], self.items.shape)
        matrix[users[in_prefix], self.items[in_prefix]] = True
        return matrix

    def train_matrix(self) -> np.ndarray:
        """Dense bool `[num_users + 1, num_items + 1]`: user interacted with item in training."""
        return self._prefix_matrix(self.train_lengths)

    def history_matrix(self, stage: Stage) -> np.ndarray:
        """Like `train_matrix`, for the items before the `stage` target: what a user has seen
        when it is predicted (the items to exclude from its ranking)."""
        return self._prefix_matrix(self.history_lengths(stage))

    def seen_matrix(self) -> np.ndarray:
        """Like `train_matrix`, including the held-out items (for sampling true negatives)."""
        return self._prefix_matrix(np.where(self.evaluated, self.lengths, 0))


def leave_last_out(data: InteractionData, held_out: int = 1) -> SequenceSplit:
    """Sort each user's interactions by timestamp (ties keep file order) and hold out the last
    `held_out` (1: test only; 2: validation then test, see `SequenceSplit`)."""
    _check_held_out(held_out)
    order = np.lexsort((np.arange(data.num_interactions), data.timestamps, data.users))
    users, items = data.users[order], data.items[order]
    lengths = np.bincount(users, minlength=data.num_users + 1)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    positions = np.arange(users.shape[0]) - starts[users]
    width = max(int(lengths.max()), 1) if lengths.size else 1
    sequences = np.zeros((data.num_users + 1, width), np.int32)
    sequences[users, positions] = items
    actions = np.zeros((data.num_users + 1, width, len(ACTIONS)), np.float32)
    actions[users, positions] = rating_actions(data.ratings[order])
    return SequenceSplit(
        data=data, items=sequences, actions=actions, lengths=lengths, held_out=held_out
    )
