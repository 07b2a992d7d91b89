"""What the Recommender tests share: the smallest model that trains, and logs of users
walking consecutive items (a pattern any sequence model learns in a few steps)."""

from collections.abc import Callable, Hashable

import numpy as np
import pytest

import phoenix_eqx as px

from ..helpers import TINY_FIT_OPTIONS


@pytest.fixture(scope="session")
def tiny_options() -> px.FitOptions:
    """One small transformer layer over 8 history items, one epoch of each stage; quiet."""
    return TINY_FIT_OPTIONS


WalkLog = Callable[..., tuple[np.ndarray, np.ndarray, np.ndarray]]


@pytest.fixture(scope="session")
def walk_log() -> WalkLog:
    """`walk_log(num_users, num_items, length, item_id=int, seed=0)`: `(users, items, times)`
    of users each walking `length` consecutive items (mod `num_items`) from a random start,
    item `i` named `item_id(i)`."""

    def make(
        num_users: int,
        num_items: int,
        length: int,
        item_id: Callable[[int], Hashable] = int,
        seed: int = 0,
    ):
        starts = np.random.default_rng(seed).integers(0, num_items, num_users)
        walks = (starts[:, None] + np.arange(length)[None, :]) % num_items
        items = np.empty(walks.size, dtype=object)
        for position, item in enumerate(walks.reshape(-1)):  # one by one: tuples stay whole
            items[position] = item_id(int(item))
        if item_id is int:
            items = items.astype(np.int64)
        times = np.tile(np.arange(length, dtype=float), num_users)
        return np.repeat(np.arange(num_users), length), items, times

    return make
