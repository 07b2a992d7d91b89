"""The index of ids: a log of `(user, item, time, rating)` rows as item rows `1..num_items`
and each user's time-ordered sequence of them.

Ids are any hashable value but None (the "no item" of `recommend`'s output) and NaN (never
equal to itself, so it could not be found again): str, int, float, bool, tuples of those...
NumPy scalars become their Python values. Ids come back from `recommend` as they went in.
"""

import dataclasses
import math
from collections.abc import Hashable

import numpy as np

from ..config import ACTIONS
from ..data.feature_hashes import plain_value
from ..data.interactions import rating_actions

# Implicit feedback: every row is an engagement, seen as a click and a favorite.
ENGAGED = ("click_score", "favorite_score")
# Bit `a` of an action mask is action `a` (`ACTIONS`): a log's actions are kept as one int32
# per interaction, 19x smaller than multi-hot float32 (MovieLens-1M's would take 76 MB).
ACTION_BITS = 1 << np.arange(len(ACTIONS), dtype=np.int64)
ENGAGED_MASK = sum(1 << ACTIONS.index(name) for name in ENGAGED)


def as_ids(values, name: str) -> list:
    """`values` as a list of plain ids, or a ValueError naming `name`: a 1-D sequence (not a
    bare string) of hashable ids, none of them None or NaN."""
    if isinstance(values, str | bytes) or not hasattr(values, "__len__"):
        raise ValueError(f"{name}: expected a 1-D sequence of ids, got {type(values).__name__}")
    if isinstance(values, np.ndarray) and values.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D sequence, got shape {values.shape}")
    plain = [plain_value(value) for value in values]
    for position, value in enumerate(plain):
        if value is None:
            raise ValueError(f"{name}: expected ids, got None at position {position}")
        if isinstance(value, float) and math.isnan(value):
            raise ValueError(f"{name}: expected ids, got NaN at position {position}")
        try:
            hash(value)
        except TypeError:
            raise ValueError(f"{name}: expected hashable ids, got {value!r}") from None
    return plain


def as_numbers(values, name: str, length: int, like: str = "user_ids") -> np.ndarray:
    """`values` as `length` float64 numbers without NaN (as many as `like` has), or a
    ValueError naming `name`."""
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected numbers, got non-numeric values") from None
    if array.shape != (length,):
        raise ValueError(f"{name}: expected shape ({length},) like {like}, got {array.shape}")
    if np.isnan(array).any():
        raise ValueError(f"{name}: expected no NaN, got {int(np.isnan(array).sum())}")
    return array


def action_masks(actions: np.ndarray) -> np.ndarray:
    """`[..., len(ACTIONS)]` 0/1 actions as `[...]` int32 bit masks (bit `a`: action `a`)."""
    return ((np.asarray(actions) > 0) @ ACTION_BITS).astype(np.int32)


def unpack_actions(masks):
    """Bit masks back to 0/1 float32 actions `[..., len(ACTIONS)]` (NumPy or JAX arrays)."""
    bits = masks[..., None] >> np.arange(len(ACTIONS), dtype=np.int32)
    return (bits & 1).astype(np.float32)


def engaged_masks(count: int) -> np.ndarray:
    """`[count]` action masks of implicit feedback: each interaction clicked and favorited."""
    return np.full(count, ENGAGED_MASK, np.int32)


@dataclasses.dataclass(frozen=True)
class IndexedLog:
    """A validated log: items as rows `1..num_items`, each user's rows and their action masks
    (`action_masks`) in time order (`sequences[i]`, `actions[i]` are `user_ids[i]`'s)."""

    item_ids: list
    user_ids: list
    sequences: list[np.ndarray]
    actions: list[np.ndarray]


def index_log(user_ids, item_ids, timestamps, ratings) -> IndexedLog:
    """The `IndexedLog` of a log's columns; ValueError naming the column on malformed input.
    Ties in time keep the input order."""
    users = _log_ids(user_ids, "user_ids")
    items = _log_ids(item_ids, "item_ids")
    if not len(users):
        raise ValueError("user_ids: expected at least one interaction, got none")
    if len(items) != len(users):
        raise ValueError(f"item_ids: expected {len(users)} ids like user_ids, got {len(items)}")
    times = as_numbers(timestamps, "timestamps", len(users))
    engagement = (
        engaged_masks(len(users))
        if ratings is None
        else action_masks(rating_actions(as_numbers(ratings, "ratings", len(users))))
    )
    item_ids, item_positions = _by_first_appearance(items)
    rows = (item_positions + 1).astype(np.int32)
    user_ids, user_rows = _by_first_appearance(users)
    order = np.lexsort((np.arange(len(users)), times, user_rows))
    bounds = np.cumsum(np.bincount(user_rows, minlength=len(user_ids)))[:-1]
    return IndexedLog(
        item_ids=item_ids,
        user_ids=user_ids,
        sequences=np.split(rows[order], bounds),
        actions=np.split(engagement[order], bounds),
    )


def _log_ids(values, name: str) -> list | np.ndarray:
    """A log's id column: a 1-D NumPy integer array as it is (every entry is an id: no None,
    no NaN), anything else through `as_ids`."""
    if isinstance(values, np.ndarray) and values.ndim == 1 and values.dtype.kind in "iu":
        return values
    return as_ids(values, name)


def _by_first_appearance(ids: list | np.ndarray) -> tuple[list, np.ndarray]:
    """The distinct ids in order of first appearance, and each entry's position among them.
    An integer array is indexed by sorting (`np.unique`): 20M Python-level lookups took 40 s
    of the first step at 10M interactions (docs/scaling-costs.md)."""
    if isinstance(ids, np.ndarray):
        distinct, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
        appearance = np.argsort(first, kind="stable")
        rank = np.empty(appearance.size, np.int64)
        rank[appearance] = np.arange(appearance.size)
        return distinct[appearance].tolist(), rank[inverse.reshape(-1)]
    index: dict[Hashable, int] = {}
    positions = np.array([index.setdefault(id_, len(index)) for id_ in ids], np.int64)
    return list(index), positions


@dataclasses.dataclass(frozen=True)
class ItemLookup:
    """Item rows back to item ids: row r is `item_ids[r - 1]`, rows <= 0 are None."""

    ids: np.ndarray  # object array, entry 0 None
    all_ints: bool  # every id a Python int (not a bool): results come back as int64

    @classmethod
    def of(cls, item_ids: list) -> "ItemLookup":
        ids = np.empty(len(item_ids) + 1, dtype=object)
        for row, item in enumerate(item_ids, start=1):  # one by one: tuple ids stay whole
            ids[row] = item
        return cls(ids, all(type(item) is int for item in item_ids))

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        """The ids of `rows`: int64 when every id is an int and every row an item, else an
        object array of the ids themselves (None for rows <= 0)."""
        items = self.ids[np.maximum(rows, 0)]
        return items.astype(np.int64) if self.all_ints and (rows > 0).all() else items
