"""The retrieval stage of `fit`: all-positions training, every position of every sequence a
target in one causal pass, sequences batched by length so that little is spent on padding.
With the sampled loss, steps update only the table rows they look up
(`training.make_row_update_step`)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np

from .. import distributed
from ..data.feature_hashes import FeatureHashes
from ..training.loop import Run, on_mesh, run_stage
from ..training.models import TrainableRetriever
from ..training.sequential import SequenceExample, all_positions_objective, all_positions_rows
from .batches import author_hashes, padded_rows, recsys_batch, training_rows
from .options import FitOptions
from .validation import Validation

# The narrowest training window: shorter sequences share its batches (and compilation).
MIN_WIDTH = 16


def length_bucketed_batches(
    lengths: np.ndarray,
    history_seq_len: int,
    batch_size: int,
    rng: np.random.Generator,
    multiple: int,
) -> list[tuple[np.ndarray, int]]:
    """One epoch's batches `(rows, width)`, every sequence once, in random order.

    Sequences are grouped by the window width their length needs (a power of two from
    `MIN_WIDTH`, or `history_seq_len`), so that a batch spends little on padding; a batch of
    width `w` holds `batch_size * history_seq_len // w` sequences, rounded down to a multiple
    of `multiple` (the devices a batch is split over; `batch_size` is one), so every step
    trains about as many positions, and few shapes (one compilation each) cover every batch.
    Short batches are filled with row `len(lengths)`, the all-padding row.
    """
    widths = sorted(
        {
            min(max(1 << max(int(length) - 1, 0).bit_length(), MIN_WIDTH), history_seq_len)
            for length in lengths
        }
    )
    needed = np.searchsorted(widths, np.minimum(lengths, history_seq_len))
    batches = []
    for index, width in enumerate(widths):
        rows = rng.permutation(np.flatnonzero(needed == index))
        size = max(1, batch_size * history_seq_len // width)
        size -= size % multiple
        for start in range(0, rows.size, size):
            batches.append((padded_rows(rows[start : start + size], size, len(lengths)), width))
    return [batches[i] for i in rng.permutation(len(batches))]


def train_retriever(
    retriever: TrainableRetriever,
    sequences: list[np.ndarray],
    users: list,
    features: FeatureHashes,
    validation: Validation,
    options: FitOptions,
    run: Run,
    deadline: float,
) -> tuple[TrainableRetriever, dict[str, float]]:
    """All-positions training, one epoch = every user once (`sequences[i]` is `users[i]`'s);
    keeps the best validation epoch. With a mesh, data-parallel over it."""
    mesh = run.mesh
    num_items = features.item_hashes.shape[0] - 1
    loss = options.resolved_loss(num_items)
    user_hashes, history_windows = training_rows(
        sequences, users, features, options.history_seq_len
    )
    targets = np.concatenate(
        [history_windows, np.zeros((history_windows.shape[0], 1), np.int32)], axis=1
    )
    lengths = np.array([sequence.size for sequence in sequences])
    devices = 1 if mesh is None else mesh.size
    # The number of batches does not depend on the draw: count them with a throwaway one.
    steps = len(
        length_bucketed_batches(
            lengths, options.history_seq_len, options.batch_size, np.random.default_rng(0), devices
        )
    )
    # logQ: an item's expected count among a batch's targets, the sampled softmax's columns.
    frequency = np.bincount(targets[targets > 0], minlength=num_items + 1) / max(
        np.count_nonzero(targets), 1
    )
    targets_per_batch = np.count_nonzero(targets) / steps
    with np.errstate(divide="ignore"):
        log_q = np.log(targets_per_batch * frequency).astype(np.float32)
    corpus_post = jnp.asarray(features.item_hashes)
    corpus_author = author_hashes(corpus_post)
    # Every row of a batch scores against the whole corpus: its hashes are replicated.
    corpus = (
        (corpus_post, corpus_author)
        if mesh is None
        else distributed.replicate((corpus_post, corpus_author), mesh)
    )

    def objective(model, example):
        return all_positions_objective(model, example, loss, options.dropout)

    rng = np.random.default_rng([options.seed, 1])
    step_numbers = itertools.count()

    def dropout_key():
        """The next step's history-dropout key (replicated: it is not per row)."""
        key = jax.random.fold_in(jax.random.key(options.seed), next(step_numbers))
        return key if mesh is None else distributed.replicate(key, mesh)

    def epoch_examples():
        batches = length_bucketed_batches(
            lengths, options.history_seq_len, options.batch_size, rng, devices
        )
        for rows, width in batches:
            batch_targets = targets[rows, : width + 1]
            batch, example_targets, target_log_q = on_mesh(
                (
                    recsys_batch(
                        user_hashes[rows],
                        history_windows[rows, :width],
                        np.zeros((rows.size, 0), np.int32),
                        corpus_post,
                    ),
                    jnp.asarray(batch_targets),
                    jnp.asarray(log_q[batch_targets]),
                ),
                mesh,
            )
            yield SequenceExample(
                batch=batch,
                targets=example_targets,
                target_log_q=target_log_q,
                corpus_post_hashes=corpus[0],
                corpus_author_hashes=corpus[1],
                dropout_key=dropout_key() if options.dropout > 0 else None,
            )

    def evaluate(model):
        return validation.metrics(model, None, options)

    stage = options.stage(
        "retrieval",
        options.learning_rate,
        options.epochs,
        steps,
        deadline,
        epoch_examples,
        evaluate,
        # The sampled loss looks up a few rows of the item table per step: update only those.
        rows_of=all_positions_rows if loss == "sampled" else None,
    )
    return run_stage(retriever, objective, stage, run)
