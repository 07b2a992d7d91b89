"""Inputs and outputs of the models, as pytrees with jaxtyping shapes, and their checks."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from .config import ACTIONS


class RecsysBatch(eqx.Module):
    """Feature ids of a batch of users (hash value 0 = padding), no embeddings.

    A user is valid iff `user_hashes[:, 0] != 0`, a history item iff its first post hash is
    non-zero, a candidate likewise.
    """

    user_hashes: Int[Array, "batch user_hashes"]
    history_post_hashes: Int[Array, "batch history item_hashes"]
    history_author_hashes: Int[Array, "batch history author_hashes"]
    history_actions: Float[Array, "batch history actions"]
    history_product_surface: Int[Array, "batch history"]
    candidate_post_hashes: Int[Array, "batch candidates item_hashes"]
    candidate_author_hashes: Int[Array, "batch candidates author_hashes"]
    candidate_product_surface: Int[Array, "batch candidates"]

    @property
    def user_valid(self) -> Bool[Array, " batch"]:
        return self.user_hashes[:, 0] != 0

    @property
    def history_valid(self) -> Bool[Array, "batch history"]:
        return self.history_post_hashes[:, :, 0] != 0

    @property
    def candidate_valid(self) -> Bool[Array, "batch candidates"]:
        return self.candidate_post_hashes[:, :, 0] != 0


class RecsysEmbeddings(eqx.Module):
    """Embeddings already looked up from hash tables, one vector per hash."""

    user_embeddings: Float[Array, "batch user_hashes emb"]
    history_post_embeddings: Float[Array, "batch history item_hashes emb"]
    candidate_post_embeddings: Float[Array, "batch candidates item_hashes emb"]
    history_author_embeddings: Float[Array, "batch history author_hashes emb"]
    candidate_author_embeddings: Float[Array, "batch candidates author_hashes emb"]


class RankingOutput(eqx.Module):
    """Ranker results: per-action probabilities and the candidates in ranked order.

    `ranked_indices` sorts each user's candidates by favorite probability, highest first,
    ties to the lower slot, with invalid (padding) candidates after every valid one.
    """

    logits: Float[Array, "batch candidates actions"]
    probabilities: Float[Array, "batch candidates actions"]
    ranked_indices: Int[Array, "batch candidates"]
    candidate_valid: Bool[Array, "batch candidates"]

    @property
    def action_names(self) -> tuple[str, ...]:
        """The seed's names of this model's actions (the first `num_actions` of `ACTIONS`)."""
        return ACTIONS[: self.probabilities.shape[-1]]

    def action(self, name: str) -> Float[Array, "batch candidates"]:
        """Probability of one action by name, e.g. `output.action("repost_score")`."""
        names = self.action_names
        if name not in names:
            beyond = (
                f" ({name!r} is action {ACTIONS.index(name)}, beyond this model's "
                f"{self.probabilities.shape[-1]} actions)"
                if name in ACTIONS
                else ""
            )
            raise ValueError(f"name: expected one of {names}{beyond}, got {name!r}")
        return self.probabilities[..., names.index(name)]

    @property
    def by_action(self) -> dict[str, Float[Array, "batch candidates"]]:
        """Each named action's probabilities, keyed by the seed's action names."""
        return {name: self.probabilities[..., i] for i, name in enumerate(self.action_names)}


class RetrievalOutput(eqx.Module):
    """Retrieval results: user vectors and their best corpus items (-1 / -inf past the valid)."""

    user_representation: Float[Array, "batch emb"]
    top_k_indices: Int[Array, "batch k"]
    top_k_scores: Float[Array, "batch k"]


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


_INTEGER_FIELDS = (
    "user_hashes",
    "history_post_hashes",
    "history_author_hashes",
    "history_product_surface",
    "candidate_post_hashes",
    "candidate_author_hashes",
    "candidate_product_surface",
)


def _check_dtypes(batch: RecsysBatch, embeddings: RecsysEmbeddings) -> None:
    """Ids and surfaces are integers, actions and embeddings floats; actions are 0 or 1 (checked
    when concrete: under `jit` the values are unknown, and a per-call device check would
    cost a host sync on the serving path)."""
    for name in _INTEGER_FIELDS:
        dtype = getattr(batch, name).dtype
        _expect(
            jnp.issubdtype(dtype, jnp.integer),
            f"batch.{name}: expected an integer dtype, got {dtype}",
        )
    actions = batch.history_actions
    _expect(
        jnp.issubdtype(actions.dtype, jnp.floating),
        f"batch.history_actions: expected a floating dtype (0/1 multi-hot), got {actions.dtype}",
    )
    if not isinstance(actions, jax.core.Tracer) and actions.size:
        values = np.asarray(actions)
        others = values[(values != 0) & (values != 1)]
        _expect(
            others.size == 0,
            f"batch.history_actions: expected values in {{0, 1}}, got {others.size} others, "
            f"e.g. {others[:3].tolist()}",
        )
    for field in dataclasses.fields(embeddings):
        dtype = getattr(embeddings, field.name).dtype
        _expect(
            jnp.issubdtype(dtype, jnp.floating),
            f"embeddings.{field.name}: expected a floating dtype, got {dtype}",
        )


def check_inputs(
    batch: RecsysBatch, embeddings: RecsysEmbeddings, config, *, needs_candidates: bool
) -> None:
    """Check a batch and its embeddings against each other and a model config, before compute.

    `config` is a `PhoenixModelConfig` or `PhoenixRetrievalModelConfig`. Raises a ValueError
    naming the field and the expected vs actual shape or dtype.
    """
    _check_dtypes(batch, embeddings)
    emb_size, history_seq_len = config.emb_size, config.history_seq_len
    num_actions, hash_config = config.num_actions, config.hash_config
    num_users = batch.user_hashes.shape[0]
    _expect(num_users >= 1, f"batch.user_hashes: expected a non-empty batch, got {num_users} rows")
    hashes = (
        ("user_hashes", batch.user_hashes, hash_config.num_user_hashes, 1),
        ("history_post_hashes", batch.history_post_hashes, hash_config.num_item_hashes, 2),
        ("history_author_hashes", batch.history_author_hashes, hash_config.num_author_hashes, 2),
        ("candidate_post_hashes", batch.candidate_post_hashes, hash_config.num_item_hashes, 2),
        (
            "candidate_author_hashes",
            batch.candidate_author_hashes,
            hash_config.num_author_hashes,
            2,
        ),
    )
    for name, array, count, axis in hashes:
        _expect(
            array.ndim == axis + 1 and array.shape[axis] == count,
            f"batch.{name}: expected {count} hashes on axis {axis} (hash config), "
            f"got shape {array.shape}",
        )
    history_len = batch.history_post_hashes.shape[1]
    _expect(
        history_len <= history_seq_len,
        f"batch.history_post_hashes: expected at most history_seq_len={history_seq_len} items, "
        f"got {history_len}",
    )
    _expect(
        batch.history_actions.shape[-1] == num_actions,
        f"batch.history_actions: expected {num_actions} actions, "
        f"got shape {batch.history_actions.shape}",
    )
    num_candidates = batch.candidate_post_hashes.shape[1]
    if needs_candidates:
        _expect(
            num_candidates >= 1,
            f"batch.candidate_post_hashes: expected at least one candidate, got {num_candidates}",
        )
    expected = {
        "user_embeddings": (num_users, hash_config.num_user_hashes, emb_size),
        "history_post_embeddings": (num_users, history_len, hash_config.num_item_hashes, emb_size),
        "history_author_embeddings": (
            num_users,
            history_len,
            hash_config.num_author_hashes,
            emb_size,
        ),
        "candidate_post_embeddings": (
            num_users,
            num_candidates,
            hash_config.num_item_hashes,
            emb_size,
        ),
        "candidate_author_embeddings": (
            num_users,
            num_candidates,
            hash_config.num_author_hashes,
            emb_size,
        ),
    }
    for name, shape in expected.items():
        actual = getattr(embeddings, name).shape
        _expect(
            actual == shape,
            f"embeddings.{name}: expected shape {shape} (from the batch and config), got {actual}",
        )
    for field in ("history_post_hashes", "history_author_hashes", "history_actions"):
        shape = getattr(batch, field).shape
        _expect(
            shape[:2] == (num_users, history_len),
            f"batch.{field}: expected leading shape {(num_users, history_len)}, got {shape}",
        )
    _expect(
        batch.history_product_surface.shape == (num_users, history_len),
        f"batch.history_product_surface: expected {(num_users, history_len)}, "
        f"got {batch.history_product_surface.shape}",
    )
    shape = batch.candidate_author_hashes.shape
    _expect(
        shape[:2] == (num_users, num_candidates),
        f"batch.candidate_author_hashes: expected leading shape {(num_users, num_candidates)}, "
        f"got {shape}",
    )
    _expect(
        batch.candidate_product_surface.shape == (num_users, num_candidates),
        f"batch.candidate_product_surface: expected {(num_users, num_candidates)}, "
        f"got {batch.candidate_product_surface.shape}",
    )


def ids_in_range(ids: Int[Array, "*shape"], num_rows: int, name: str) -> Int[Array, "*shape"]:
    """Return `ids` after checking `0 <= ids < num_rows`: eagerly when concrete, else in-graph."""
    message = f"{name}: expected ids in [0, {num_rows}) (the table size)"
    if isinstance(ids, jax.core.Tracer):
        return eqx.error_if(ids, jnp.any((ids < 0) | (ids >= num_rows)), message)
    low, high = int(jnp.min(ids)) if ids.size else 0, int(jnp.max(ids)) if ids.size else 0
    _expect(low >= 0 and high < num_rows, f"{message}, got values in [{low}, {high}]")
    return ids
