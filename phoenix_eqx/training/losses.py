"""Training losses: per-action sigmoid cross-entropy and a listwise softmax (ranking), sampled
and full softmax (retrieval)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Bool, Float, Int, Scalar

# Stands in for -inf on removed logits: finite, so a row with nothing left stays NaN-free.
REMOVED_LOGIT = -1e9


def _masked_mean(values: Float[Array, " rows"], valid: Bool[Array, " rows"]) -> Scalar:
    """The mean of the valid rows' values (0 when none is). Invalid rows are selected away,
    not multiplied by 0, so they add nothing even when NaN, to the loss or its gradient."""
    return jnp.sum(jnp.where(valid, values, 0.0)) / jnp.maximum(
        jnp.sum(valid.astype(jnp.float32)), 1.0
    )


def ranking_loss(
    logits: Float[Array, "batch candidates actions"],
    labels: Float[Array, "batch candidates actions"],
    candidate_valid: Bool[Array, "batch candidates"],
    action_weights: Float[Array, " actions"] | None = None,
) -> Scalar:
    """Sigmoid binary cross-entropy per action, averaged over valid candidates.

    Each valid candidate contributes `sum_a w_a * bce_a / sum_a w_a` (plain mean over actions
    when `action_weights` is None); padding candidates never contribute. With no valid
    candidate the loss is 0. Computed in float32 whatever the logits' dtype.
    """
    if logits.shape != labels.shape:
        raise ValueError(f"labels: expected shape {logits.shape} like logits, got {labels.shape}")
    if candidate_valid.shape != logits.shape[:2]:
        raise ValueError(
            f"candidate_valid: expected shape {logits.shape[:2]}, got {candidate_valid.shape}"
        )
    num_actions = logits.shape[-1]
    if action_weights is None:
        action_weights = jnp.ones((num_actions,), jnp.float32)
    if action_weights.shape != (num_actions,):
        raise ValueError(
            f"action_weights: expected shape ({num_actions},), got {action_weights.shape}"
        )
    action_weights = eqx.error_if(
        action_weights,
        jnp.any(action_weights < 0) | (jnp.sum(action_weights) <= 0),
        "action_weights: expected non-negative weights with a positive sum",
    )
    per_action = optax.sigmoid_binary_cross_entropy(
        logits.astype(jnp.float32), labels.astype(jnp.float32)
    )
    weights = action_weights.astype(jnp.float32)
    per_candidate = jnp.sum(per_action * weights, axis=-1) / jnp.sum(weights)
    valid = candidate_valid.astype(jnp.float32)
    return jnp.sum(per_candidate * valid) / jnp.maximum(jnp.sum(valid), 1.0)


def listwise_loss(
    scores: Float[Array, "cuts candidates"],
    targets: Int[Array, " cuts"],
    candidate_valid: Bool[Array, "cuts candidates"],
) -> Scalar:
    """Softmax cross-entropy of each cut's true item (slot `targets[i]`) among its valid
    candidates, averaged over the cuts whose true item is valid (0 when none is).

    The loss of the residual ranker: it trains the very score serving orders by, over the
    candidates serving would see, where a per-candidate sigmoid only learns each item's odds
    on its own (mostly its popularity). Invalid candidates are replaced before the softmax and
    cuts without a valid target selected away after it, so they add nothing, not even a NaN
    score, to the loss. Computed in float32 whatever the scores' dtype.
    """
    if candidate_valid.shape != scores.shape:
        raise ValueError(
            f"candidate_valid: expected shape {scores.shape} like scores, got "
            f"{candidate_valid.shape}"
        )
    if targets.shape != scores.shape[:1]:
        raise ValueError(f"targets: expected shape {scores.shape[:1]}, got {targets.shape}")
    scores = jnp.where(candidate_valid, scores.astype(jnp.float32), REMOVED_LOGIT)
    counted = jnp.take_along_axis(candidate_valid, targets[:, None], axis=1)[:, 0]
    per_cut = optax.softmax_cross_entropy_with_integer_labels(scores, targets)
    return _masked_mean(per_cut, counted)


def retrieval_loss(
    user_vectors: Float[Array, "batch emb"],
    positive_vectors: Float[Array, "batch emb"],
    positive_ids: Int[Array, " batch"],
    temperature: Float[Array, ""] | float,
    *,
    positive_log_q: Float[Array, " batch"] | None = None,
    negative_vectors: Float[Array, "negatives emb"] | None = None,
    negative_ids: Int[Array, " negatives"] | None = None,
    negative_log_q: Float[Array, " negatives"] | None = None,
    user_valid: Bool[Array, " batch"] | None = None,
) -> Scalar:
    """Sampled softmax: each user's positive against in-batch and extra sampled negatives.

    User `i` scores every column `j` (the batch's positives, then the extra negatives) as
    `u_i.v_j / temperature - log_q_j`; the cross-entropy of its own positive (column `i`) is
    averaged over valid users. `log_q` (the log of how likely the sampler is to draw an item;
    0 when omitted) corrects the popularity bias of in-batch negatives (logQ correction).
    Accidental hits, columns other than `i` with the same id as user `i`'s positive, are
    removed, as are other users' invalid positives (id 0).
    """
    batch, emb = user_vectors.shape
    if positive_vectors.shape != (batch, emb):
        raise ValueError(
            f"positive_vectors: expected shape {(batch, emb)}, got {positive_vectors.shape}"
        )
    if positive_ids.shape != (batch,):
        raise ValueError(f"positive_ids: expected shape ({batch},), got {positive_ids.shape}")
    if positive_log_q is None:
        positive_log_q = jnp.zeros((batch,), jnp.float32)
    if positive_log_q.shape != (batch,):
        raise ValueError(f"positive_log_q: expected shape ({batch},), got {positive_log_q.shape}")
    if user_valid is None:
        user_valid = positive_ids != 0
    if user_valid.shape != (batch,):
        raise ValueError(f"user_valid: expected shape ({batch},), got {user_valid.shape}")
    if negative_vectors is None:
        negative_vectors = jnp.zeros((0, emb), user_vectors.dtype)
    num_negatives = negative_vectors.shape[0]
    if negative_vectors.shape != (num_negatives, emb):
        raise ValueError(
            f"negative_vectors: expected shape (negatives, {emb}), got {negative_vectors.shape}"
        )
    if negative_ids is None:
        negative_ids = jnp.full((num_negatives,), -1, jnp.int32)
    if negative_log_q is None:
        negative_log_q = jnp.zeros((num_negatives,), jnp.float32)
    for name, array in (("negative_ids", negative_ids), ("negative_log_q", negative_log_q)):
        if array.shape != (num_negatives,):
            raise ValueError(f"{name}: expected shape ({num_negatives},), got {array.shape}")
    temperature = eqx.error_if(
        jnp.asarray(temperature, jnp.float32),
        jnp.asarray(temperature) <= 0,
        "temperature: expected > 0",
    )

    columns = jnp.concatenate([positive_vectors, negative_vectors.astype(positive_vectors.dtype)])
    column_ids = jnp.concatenate([positive_ids, negative_ids.astype(positive_ids.dtype)])
    column_log_q = jnp.concatenate([positive_log_q, negative_log_q]).astype(jnp.float32)
    scores = jnp.dot(user_vectors.astype(jnp.float32), columns.astype(jnp.float32).T)
    logits = scores / temperature - column_log_q[None, :]

    own = jnp.arange(batch)[:, None] == jnp.arange(batch + num_negatives)[None, :]
    accidental = (column_ids[None, :] == positive_ids[:, None]) & ~own
    in_batch_invalid = jnp.concatenate(
        [~user_valid | (positive_ids == 0), jnp.zeros((num_negatives,), bool)]
    )
    removed = accidental | (in_batch_invalid[None, :] & ~own)
    logits = jnp.where(removed, REMOVED_LOGIT, logits)
    # An invalid user's row is replaced before the softmax and its loss selected away, so it
    # adds nothing, not even a NaN (its log_q may be -inf, its vector anything), to the loss
    # or to any gradient.
    logits = jnp.where(user_valid[:, None], logits, 0.0)
    per_user = -jnp.sum(jax.nn.log_softmax(logits, axis=-1) * own, axis=-1)
    return _masked_mean(per_user, user_valid)


def full_softmax_loss(
    user_vectors: Float[Array, "targets emb"],
    item_vectors: Float[Array, "items emb"],
    targets: Int[Array, " targets"],
    valid: Bool[Array, " targets"],
    temperature: Float[Array, ""] | float,
) -> Scalar:
    """Cross-entropy of each target item against every item of the corpus.

    Row `i` scores all items as `u_i.v_j / temperature` and pays `-log softmax` of item
    `targets[i]`; the mean is over valid rows (0 when none is). Exact, no sampling bias: the
    loss of choice when the `[targets, items]` logits fit in memory (corpora of a few tens of
    thousands of items), where `retrieval_loss` samples the negatives instead.
    """
    num_targets, emb = user_vectors.shape
    if item_vectors.ndim != 2 or item_vectors.shape[1] != emb:
        raise ValueError(f"item_vectors: expected shape (items, {emb}), got {item_vectors.shape}")
    for name, array in (("targets", targets), ("valid", valid)):
        if array.shape != (num_targets,):
            raise ValueError(f"{name}: expected shape ({num_targets},), got {array.shape}")
    temperature = eqx.error_if(
        jnp.asarray(temperature, jnp.float32),
        jnp.asarray(temperature) <= 0,
        "temperature: expected > 0",
    )
    # Invalid rows are zeroed before and selected away after: they add nothing, even as NaN.
    users = jnp.where(valid[:, None], user_vectors.astype(jnp.float32), 0.0)
    logits = jnp.dot(users, item_vectors.astype(jnp.float32).T)
    per_row = optax.softmax_cross_entropy_with_integer_labels(logits / temperature, targets)
    return _masked_mean(per_row, valid)
