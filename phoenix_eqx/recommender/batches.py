"""Item rows as Phoenix inputs: the fixed-width windows, exclusion lists and `RecsysBatch`es
that both stages, validation and serving feed the models."""

import math

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Int

from ..data.feature_hashes import FeatureHashes
from ..inputs import RecsysBatch
from .index import ENGAGED_MASK, unpack_actions


def windows(sequences: list[np.ndarray], history_seq_len: int) -> np.ndarray:
    """`[len(sequences), history_seq_len]`: each sequence's latest items, left-aligned (0 after)."""
    out = np.zeros((len(sequences), history_seq_len), np.int32)
    for row, sequence in enumerate(sequences):
        latest = sequence[-history_seq_len:]
        out[row, : latest.size] = latest
    return out


def training_rows(
    sequences: list[np.ndarray], users: list, features: FeatureHashes, history_seq_len: int
) -> tuple[np.ndarray, np.ndarray]:
    """The users' hashes and windows (`sequences[i]` is `users[i]`'s), each with one last
    all-padding row: the row that fills a stage's short batches, with no target, so no loss."""
    user_hashes = np.concatenate([features.user_rows(users), features.unknown_user[None]])
    history_windows = np.concatenate(
        [windows(sequences, history_seq_len), np.zeros((1, history_seq_len), np.int32)]
    )
    return user_hashes, history_windows


def excluded(sequences: list[np.ndarray]) -> np.ndarray:
    """`[users, width]` item rows to exclude (0-padded); width rounded up to limit recompiles."""
    width = max((sequence.size for sequence in sequences), default=1)
    width = 64 * math.ceil(max(width, 1) / 64)
    out = np.zeros((len(sequences), width), np.int32)
    for row, sequence in enumerate(sequences):
        out[row, : sequence.size] = sequence
    return out


def padded_rows(rows: np.ndarray, size: int, padding_row: int) -> np.ndarray:
    """`rows` filled up to `size` entries with `padding_row`."""
    return np.concatenate([rows, np.full(size - rows.size, padding_row, rows.dtype)])


def author_hashes(post_hashes: Int[Array, "*items item_hashes"]) -> Int[Array, "*items 1"]:
    """One author row shared by every item (0 for padding)."""
    return (post_hashes[..., :1] > 0).astype(jnp.int32)


def recsys_batch(
    users: Int[Array | np.ndarray, "batch user_hashes"],
    histories: Int[Array | np.ndarray, "batch history"],
    candidates: Int[Array | np.ndarray, "batch candidates"],
    item_hashes: Int[Array | np.ndarray, "rows item_hashes"],
    history_actions: Int[Array | np.ndarray, "batch history"] | None = None,
) -> RecsysBatch:
    """Item rows as Phoenix features: post hashes `item_hashes[row]` (`FeatureHashes`), one
    shared author row, surface 0; `users` are the users' hashes. `history_actions` are the
    history items' action masks (`index.action_masks`); None: every item engaged (clicked and
    favorited), as a bare list of item ids says."""
    histories, candidates = jnp.asarray(histories), jnp.asarray(candidates)
    item_hashes = jnp.asarray(item_hashes, jnp.int32)
    history_post, candidate_post = item_hashes[histories], item_hashes[candidates]
    masks = ENGAGED_MASK if history_actions is None else jnp.asarray(history_actions, jnp.int32)
    return RecsysBatch(
        user_hashes=jnp.asarray(users, jnp.int32),
        history_post_hashes=history_post,
        history_author_hashes=author_hashes(history_post),
        history_actions=unpack_actions(jnp.where(histories > 0, masks, 0)),
        history_product_surface=jnp.zeros(histories.shape, jnp.int32),
        candidate_post_hashes=candidate_post,
        candidate_author_hashes=author_hashes(candidate_post),
        candidate_product_surface=jnp.zeros(candidates.shape, jnp.int32),
    )
