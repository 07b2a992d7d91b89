"""How `Recommender` turns ids and categorical side features into Phoenix's hash rows.

As in Phoenix, side features are extra hash functions: item row `r` hashes to its id row and one
row per item column, a user to the shared user row and one row per user column; each column's
values get rows of their own after the ids' rows, so no two collide.
"""

import dataclasses
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from jaxtyping import Int

# Users are fed through one shared row: the user token is a learned start-of-sequence token,
# so users unseen in training are served like any other.
SHARED_USER_ROW = 1


def plain_value(value: Any) -> Hashable:
    """A numpy scalar as its Python value, so ids compare and serialise like the user's."""
    return value.item() if isinstance(value, np.generic) else value


# Side features: `{column name: {id: categorical value}}`.
SideFeatures = Mapping[str, Mapping[Hashable, Hashable]]


@dataclasses.dataclass(frozen=True)
class FeatureHashes:
    """Phoenix's hashes of every item row and every user known from fit.

    Item row `r` hashes to `item_hashes[r]`: post row `r` (its id), then one post row per item
    column. A known user hashes to `user_hashes[user]`: `SHARED_USER_ROW`, then one user row per
    user column. A column's values get rows of their own after the ids' rows (item rows
    `1..num_items`, the shared user row), numbered column after column, so no two collide; an
    id without a value in a column gets 0 there, padding (a zero embedding). Without columns
    the hashes are the ids alone.
    """

    item_columns: tuple[str, ...]
    user_columns: tuple[str, ...]
    item_hashes: Int[np.ndarray, "rows item_hashes"]
    user_hashes: dict[Hashable, Int[np.ndarray, " user_hashes"]]
    num_post_rows: int
    num_user_rows: int

    def user_rows(self, users: Sequence[Hashable]) -> Int[np.ndarray, "users user_hashes"]:
        """`[len(users), user_hashes]`: the users' hashes; a user unknown to fit gets the shared
        row and padding for its features (`unknown_user`)."""
        rows = np.empty((len(users), 1 + len(self.user_columns)), np.int32)
        for index, user in enumerate(users):
            rows[index] = self.user_hashes.get(user, self.unknown_user)
        return rows

    @property
    def unknown_user(self) -> Int[np.ndarray, " user_hashes"]:
        return np.array([SHARED_USER_ROW] + [0] * len(self.user_columns), np.int32)


def feature_columns(
    features: SideFeatures | None, name: str, ids: list
) -> list[tuple[str, dict[Hashable, Hashable]]]:
    """The validated columns of `features` (`name`: the argument), ids and values as plain
    Python values; `ids` are the log's, of which every column must name at least one."""
    if features is None:
        return []
    if not isinstance(features, Mapping):
        raise ValueError(
            f"{name}: expected a mapping {{column name: {{id: value}}}}, "
            f"got {type(features).__name__}"
        )
    known = set(ids)
    columns = []
    for column, values in features.items():
        if not isinstance(column, str):
            raise ValueError(f"{name}: expected str column names, got {column!r}")
        where = f"{name}[{column!r}]"
        if not isinstance(values, Mapping):
            raise ValueError(
                f"{where}: expected a mapping {{id: value}}, got {type(values).__name__}"
            )
        if not values:
            raise ValueError(f"{where}: expected at least one value, got an empty column")
        plain = {}
        for key, value in values.items():
            value = plain_value(value)
            try:
                hash(value)
            except TypeError:
                raise ValueError(
                    f"{where}: expected hashable values, got {value!r} for id {key!r}"
                ) from None
            plain[plain_value(key)] = value
        if known.isdisjoint(plain):
            raise ValueError(
                f"{where}: expected ids from the log (like {ids[0]!r}), got none of them "
                f"(first {next(iter(plain))!r})"
            )
        columns.append((column, plain))
    return columns


def _value_rows(
    ids: list, columns: list[tuple[str, dict[Hashable, Hashable]]], first_row: int
) -> tuple[Int[np.ndarray, "ids columns"], int]:
    """Each id's row for its value in each column (0 without one), values numbered from
    `first_row` in order of first appearance, column after column; and the next free row."""
    rows = np.zeros((len(ids), len(columns)), np.int32)
    next_row = first_row
    for index, (_, values) in enumerate(columns):
        numbered: dict[Hashable, int] = {}
        for position, entity in enumerate(ids):
            if entity in values:
                rows[position, index] = numbered.setdefault(
                    values[entity], next_row + len(numbered)
                )
        next_row += len(numbered)
    return rows, next_row


def feature_hashes(
    item_ids: list,
    user_ids: list,
    item_columns: Sequence[tuple[str, dict[Hashable, Hashable]]] = (),
    user_columns: Sequence[tuple[str, dict[Hashable, Hashable]]] = (),
) -> FeatureHashes:
    """The hashes of `item_ids` (rows `1..`) and `user_ids` with the given side-feature
    columns (`feature_columns`); none: the ids alone."""
    num_items = len(item_ids)
    item_values, num_post_rows = _value_rows(item_ids, list(item_columns), num_items + 1)
    item_hashes = np.zeros((num_items + 1, 1 + len(item_columns)), np.int32)
    item_hashes[1:, 0] = np.arange(1, num_items + 1)
    item_hashes[1:, 1:] = item_values
    user_values, num_user_rows = _value_rows(user_ids, list(user_columns), SHARED_USER_ROW + 1)
    user_hashes = np.concatenate(
        [np.full((len(user_ids), 1), SHARED_USER_ROW, np.int32), user_values], axis=1
    )
    return FeatureHashes(
        item_columns=tuple(name for name, _ in item_columns),
        user_columns=tuple(name for name, _ in user_columns),
        item_hashes=item_hashes,
        user_hashes=dict(zip(user_ids, user_hashes, strict=True)),
        num_post_rows=num_post_rows,
        num_user_rows=num_user_rows,
    )
