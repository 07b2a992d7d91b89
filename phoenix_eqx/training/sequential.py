"""All-positions retrieval training: every position of a sequence is a target in one pass.

A `SequenceExample` holds left-aligned sequences (items first, padding after) and, for each
prefix `[user | items[:t]]`, the corpus row it must predict (`items[t]`, 0 = no target).
`PhoenixRetrievalModel.encode_all_prefixes` gives every prefix's user vector at once, so a
batch of `B` sequences of length `T` trains up to `B * T` targets for the cost of `B` passes.
"""

from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray, Scalar

from ..inputs import RecsysBatch, RecsysEmbeddings
from .losses import full_softmax_loss, retrieval_loss
from .models import TrainableRetriever
from .row_updates import LookedUp

SequenceLoss = Literal["full", "sampled"]


class SequenceExample(eqx.Module):
    """Left-aligned sequences and each prefix's target row of the corpus (0 = none).

    `corpus_*_hashes` are the hashes of every corpus row (row 0 = padding); `target_log_q` the
    log sampling probability of each target among a batch's columns (sampled softmax only);
    `dropout_key` draws the step's history dropout (needed when the objective's `dropout` > 0).
    """

    batch: RecsysBatch
    targets: Int[Array, "batch prefix"]
    target_log_q: Float[Array, "batch prefix"]
    corpus_post_hashes: Int[Array, "rows item_hashes"]
    corpus_author_hashes: Int[Array, "rows author_hashes"]
    dropout_key: PRNGKeyArray | None = None


def drop_history(embeddings: RecsysEmbeddings, rate: float, key: PRNGKeyArray) -> RecsysEmbeddings:
    """Inverted dropout on the history's item and author embeddings: each entry is zeroed
    with probability `rate` and the rest scaled by `1 / (1 - rate)`, so a token's expected
    embedding is unchanged (the user and candidate embeddings are left alone)."""
    post_key, author_key = jax.random.split(key)

    def drop(values, key):
        keep = jax.random.bernoulli(key, 1.0 - rate, values.shape)
        return jnp.where(keep, values / (1.0 - rate), 0.0).astype(values.dtype)

    return eqx.tree_at(
        lambda e: (e.history_post_embeddings, e.history_author_embeddings),
        embeddings,
        (
            drop(embeddings.history_post_embeddings, post_key),
            drop(embeddings.history_author_embeddings, author_key),
        ),
    )


def all_positions_objective(
    model: TrainableRetriever,
    example: SequenceExample,
    loss: SequenceLoss = "full",
    dropout: float = 0.0,
) -> tuple[Scalar, dict[str, Scalar]]:
    """Mean loss over every valid (prefix, next item) pair of the batch.

    `"full"`: `full_softmax_loss` against every corpus item (exact; the corpus' `[targets,
    items]` logits must fit in memory). `"sampled"`: `retrieval_loss` with the batch's other
    targets as negatives and the logQ correction. Aux: the loss, the temperature and the
    number of targets. `dropout` > 0 drops the history's embeddings (`drop_history`) with
    `example.dropout_key`.
    """
    if loss not in ("full", "sampled"):
        raise ValueError(f"loss: expected 'full' or 'sampled', got {loss!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout: expected a rate in [0, 1), got {dropout}")
    if dropout > 0 and example.dropout_key is None:
        raise ValueError("example.dropout_key: expected a PRNG key when dropout > 0, got None")
    batch = example.batch
    prefixes = batch.history_post_hashes.shape[1] + 1
    if example.targets.shape != (batch.user_hashes.shape[0], prefixes):
        raise ValueError(
            f"example.targets: expected shape {(batch.user_hashes.shape[0], prefixes)} "
            f"(one per prefix), got {example.targets.shape}"
        )
    embeddings = model.tables(batch)
    if dropout > 0:
        embeddings = drop_history(embeddings, dropout, example.dropout_key)
    users, _ = model.model.encode_all_prefixes(batch, embeddings)
    users = users.reshape(-1, users.shape[-1])
    targets = example.targets.reshape(-1)
    valid = targets > 0
    if loss == "full":
        # Row 0 is padding: score the real items only, so target row r is class r - 1.
        items = model.encode_items(example.corpus_post_hashes[1:], example.corpus_author_hashes[1:])
        value = full_softmax_loss(
            users, items, jnp.maximum(targets - 1, 0), valid, model.temperature
        )
    else:
        positives = model.encode_items(
            example.corpus_post_hashes[targets], example.corpus_author_hashes[targets]
        )
        value = retrieval_loss(
            users,
            positives,
            targets,
            model.temperature,
            positive_log_q=example.target_log_q.reshape(-1),
            user_valid=valid,
        )
    return value, {"loss": value, "temperature": model.temperature, "targets": jnp.sum(valid)}


def all_positions_rows(example: SequenceExample) -> LookedUp:
    """Every table row `all_positions_objective` looks up with the sampled loss: the users,
    the history and candidates, and the target rows of the corpus (the full loss looks up
    every corpus row: a plain step suits it)."""
    batch = example.batch
    return LookedUp(
        user=batch.user_hashes,
        post=jnp.concatenate(
            [
                jnp.ravel(batch.history_post_hashes),
                jnp.ravel(batch.candidate_post_hashes),
                jnp.ravel(example.corpus_post_hashes[example.targets]),
            ]
        ),
        author=jnp.concatenate(
            [
                jnp.ravel(batch.history_author_hashes),
                jnp.ravel(batch.candidate_author_hashes),
                jnp.ravel(example.corpus_author_hashes[example.targets]),
            ]
        ),
    )
