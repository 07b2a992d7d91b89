"""Synthetic interactions with planted structure, for fast tests of training.

Users and items get latent factors; a user picks items with probability proportional to
`exp(sharpness * u.v)` (without replacement, via Gumbel top-k), so a model that recovers the
factors predicts held-out items far better than chance. Ratings grow with the affinity.
"""

import numpy as np

from .interactions import InteractionData


def synthetic_interactions(
    num_users: int = 200,
    num_items: int = 100,
    interactions_per_user: int = 20,
    num_factors: int = 4,
    sharpness: float = 3.0,
    *,
    seed: int = 0,
) -> InteractionData:
    """Interactions of `num_users` users with `num_items` items, `interactions_per_user` each.

    Features: user hashes `[user id, user cluster]`, post hashes `[item id]`, author hashes
    `[item cluster]`, surface = item cluster; a cluster is the factor with the largest value.
    """
    for name, value, low in (
        ("num_users", num_users, 1),
        ("num_items", num_items, 2),
        ("num_factors", num_factors, 1),
        ("interactions_per_user", interactions_per_user, 2),
    ):
        if value < low:
            raise ValueError(f"{name}: expected >= {low}, got {value}")
    if interactions_per_user > num_items:
        raise ValueError(
            f"interactions_per_user: expected <= num_items={num_items}, got {interactions_per_user}"
        )
    rng = np.random.default_rng(seed)
    user_factors = rng.normal(size=(num_users, num_factors)) / np.sqrt(num_factors)
    item_factors = rng.normal(size=(num_items, num_factors))
    affinity = user_factors @ item_factors.T
    gumbel = rng.gumbel(size=affinity.shape)
    chosen = np.argsort(-(sharpness * affinity + gumbel), axis=1)[:, :interactions_per_user]
    # The chosen order is random in time: the structure is in the factors, not the sequence.
    chosen = rng.permuted(chosen, axis=1)
    chosen_affinity = np.take_along_axis(affinity, chosen, axis=1)
    ratings = np.clip(np.round(3.0 + 1.5 * chosen_affinity), 1, 5)

    users = np.repeat(np.arange(1, num_users + 1), interactions_per_user)
    timestamps = np.tile(np.arange(interactions_per_user), num_users)
    user_cluster = np.argmax(user_factors, axis=1)
    item_cluster = np.argmax(item_factors, axis=1)

    user_hashes = np.zeros((num_users + 1, 2), np.int32)
    user_hashes[1:, 0] = np.arange(1, num_users + 1)
    user_hashes[1:, 1] = num_users + 1 + user_cluster
    post_hashes = np.arange(num_items + 1, dtype=np.int32)[:, None]
    author_hashes = np.zeros((num_items + 1, 1), np.int32)
    author_hashes[1:, 0] = 1 + item_cluster
    item_surface = np.zeros(num_items + 1, np.int32)
    item_surface[1:] = item_cluster
    return InteractionData(
        users=users,
        items=chosen.reshape(-1) + 1,
        ratings=ratings.reshape(-1).astype(np.float32),
        timestamps=timestamps,
        user_hashes=user_hashes,
        post_hashes=post_hashes,
        author_hashes=author_hashes,
        item_surface=item_surface,
        num_user_rows=num_users + 1 + num_factors,
        num_post_rows=num_items + 1,
        num_author_rows=num_factors + 1,
        num_surfaces=num_factors,
    )


def planted_walks(
    num_users: int,
    num_items: int,
    num_interactions: int,
    *,
    follow: float = 0.8,
    skew: float = 2.0,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A raw log `(user ids, item ids, timestamps)` of users walking a planted item order.

    For benchmarks at any size (vectorised: about a second per 10M rows, no per-row Python):
    the items, ids `1..num_items`, sit on one hidden cycle in random order. Each user's next
    item is, with probability `follow`, the successor of the current one on the cycle, else a
    jump to a position drawn as `num_items * uniform ** skew` (`skew > 1`: a popularity skew
    towards the cycle's start). So the next item is predictable from the last one (a
    sequential model or item-to-item co-occurrence find it; popularity mostly does not).
    Users `0..num_users - 1` get `num_interactions // num_users` rows each (the first
    `num_interactions % num_users` users one more), in time order with timestamps `0, 1, ...`.
    """
    for name, value, low in (
        ("num_users", num_users, 1),
        ("num_items", num_items, 2),
        ("num_interactions", num_interactions, 2 * num_users),
    ):
        if value < low:
            raise ValueError(f"{name}: expected >= {low}, got {value}")
    if not 0.0 <= follow <= 1.0 or skew <= 0.0:
        raise ValueError(f"follow, skew: expected in [0, 1] and > 0, got {follow}, {skew}")
    rng = np.random.default_rng(seed)
    lengths = np.full(num_users, num_interactions // num_users)
    lengths[: num_interactions % num_users] += 1
    users = np.repeat(np.arange(num_users, dtype=np.int64), lengths)
    first = np.zeros(num_interactions, bool)
    first[np.cumsum(lengths)[:-1]] = True
    first[0] = True
    # A walk restarts at each user's first row and at each jump; between restarts it steps on.
    restart = first | (rng.random(num_interactions) >= follow)
    rows = np.arange(num_interactions)
    last_restart = np.maximum.accumulate(np.where(restart, rows, 0))
    start_position = (num_items * rng.random(num_interactions) ** skew).astype(np.int64)
    positions = (start_position[last_restart] + rows - last_restart) % num_items
    cycle = rng.permutation(num_items).astype(np.int64) + 1
    timestamps = rows - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return users, cycle[positions], timestamps
