"""The ranker stage of `fit`: the ranker trained on what retrieval hands it. A step encodes
each user's sequence once and cuts it at random positions; each cut's candidates (its true
next item and negatives from retrieval's top results for that prefix) are scored against
the cut prefix, so candidate isolation keeps them independent.

The residual ranker (`ranker_loss="listwise"`) starts where retrieval ends: its score is
retrieval's logit plus its own correction, zero untrained, and it learns that very score with
a softmax over each cut's candidates."""

import math

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from ..config import ACTIONS
from ..data.feature_hashes import FeatureHashes
from ..training.loop import Run, StageClock, on_mesh, run_stage
from ..training.losses import listwise_loss, ranking_loss
from ..training.models import TrainableRanker, TrainableRetriever
from .batches import padded_rows, recsys_batch, training_rows, windows
from .corpus_search import dot_scores, top_unseen
from .index import unpack_actions
from .models import item_vectors
from .options import FitOptions
from .two_stage import residual_scores
from .validation import Validation


@eqx.filter_jit
def retrieved_at_cuts(
    retriever: TrainableRetriever,
    vectors: Float[Array, "rows emb"],
    item_hashes: Int[Array, "rows item_hashes"],
    users: Int[Array, "batch user_hashes"],
    history_windows: Int[Array, "batch history"],
    cut_rows: Int[Array, " cuts"],
    cut_items: Int[Array, " cuts"],
    exclude: Int[Array, "cuts excluded"],
    k: int,
) -> tuple[Int[Array, "cuts k"], Float[Array, "cuts k"], Float[Array, "cuts emb"]]:
    """Retrieval's top `k` for each cut prefix
    `[user | history_windows[cut_rows[i], :cut_items[i]]]` (never the rows in `exclude`),
    their dot products and the cut prefixes' user vectors, from one pass over the whole
    windows: a prefix's user vector is `encode_all_prefixes`' row for it."""
    empty = jnp.zeros((history_windows.shape[0], 0), jnp.int32)
    batch = recsys_batch(users, history_windows, empty, item_hashes)
    prefixes, _ = retriever.model.encode_all_prefixes(batch, retriever.tables(batch))
    cut_users = prefixes[cut_rows, cut_items]
    retrieved, scores = top_unseen(cut_users, vectors, exclude, k)
    return retrieved, scores, cut_users


@eqx.filter_jit
def retrieval_logits(
    retriever: TrainableRetriever,
    vectors: Float[Array, "rows emb"],
    cut_users: Float[Array, "cuts emb"],
    candidates: Int[Array, "cuts candidates"],
) -> Float[Array, "cuts candidates"]:
    """Retrieval's logit of each cut's candidates, the residual ranker's base score: the dot
    product of the cut's user vector and the item's over the temperature, as serving
    computes it for what it retrieved (`dot_scores`, bit for bit)."""
    dots = dot_scores(cut_users, vectors[candidates])
    return dots / retriever.temperature


def train_ranker(
    ranker: TrainableRanker,
    retriever: TrainableRetriever,
    sequences: list[np.ndarray],
    actions: list[np.ndarray],
    users: list,
    features: FeatureHashes,
    validation: Validation,
    options: FitOptions,
    run: Run,
    deadline: float,
) -> tuple[TrainableRanker, dict[str, float]] | None:
    """The ranker on what retrieval returns. A step encodes `batch_size` users' sequences once
    and cuts each at `ranker_positions_per_user` random positions: a cut's candidates are its
    true next item plus negatives drawn from the retriever's top `num_retrieved` for that
    prefix, scored against the cut prefix (`TrainableRanker.score_at_cuts`)
    (`sequences[i]` and its action masks `actions[i]` are `users[i]`'s; with
    `ranker_history_actions="logged"` the ranker's history tokens carry `actions`). With a
    mesh, data-parallel over it.

    `ranker_loss="bce"`: per-action sigmoid cross-entropy of the candidates' actions, from the
    ranker as given. `"listwise"`: the ranker's head is zeroed first
    (`TrainableRanker.with_zero_head`) and `listwise_loss` trains the served score,
    `residual_scores` of retrieval's logit; each user's first cut is its latest, the one
    serving reads; a cut whose true item retrieval would not hand the ranker (outside its
    top `num_retrieved`) is dropped: serving can never put that item first, and its loss
    would push the correction by the whole gap to retrieval's favourites for no served gain.

    None, without training, when less time is left to `deadline` than the last stage's
    startup (`Run.startup_s`: its first step and validation, which compile): the ranker's own,
    which no deadline cuts, would overrun it. It compiles a model of the same size and
    retrieval's top results, and took longer than retrieval's in every fit measured."""
    if StageClock(run.started, deadline, run.mesh).fraction_used(run.startup_s[-1]) >= 1.0:
        return None
    mesh = run.mesh
    num_items = features.item_hashes.shape[0] - 1
    history_seq_len, batch_size = options.history_seq_len, options.batch_size
    cuts_per_user = options.ranker_positions_per_user
    num_negatives = min(options.ranker_candidates - 1, num_items - 1)
    num_pool = min(max(options.num_retrieved, num_negatives), num_items - 1)
    item_hashes = jnp.asarray(features.item_hashes)
    vectors = item_vectors(retriever, item_hashes)
    user_hashes, history_windows = training_rows(sequences, users, features, history_seq_len)
    # Each window's action masks: the BCE's labels, and what the ranker's history says with
    # `ranker_history_actions="logged"` (the padding row last, as `training_rows` puts it).
    action_windows = windows([*actions, np.zeros(0, np.int32)], history_seq_len)
    history_actions = action_windows if options.ranker_history_actions == "logged" else None
    lengths = np.array([min(sequence.size, history_seq_len) for sequence in sequences] + [1])
    listwise = options.residual_ranker
    loss_weights = jnp.asarray(options.weight_vector() != 0, jnp.float32)
    action_weights = jnp.asarray(options.weight_vector())

    def bce_objective(model, example):
        prefixes, cut_rows, cut_lengths, candidates, labels = example
        logits = model.score_at_cuts(prefixes, cut_rows, cut_lengths, candidates)
        value = ranking_loss(logits, labels, candidates.candidate_valid, loss_weights)
        return value, {"loss": value, "targets": jnp.sum(candidates.candidate_valid)}

    def listwise_objective(model, example):
        prefixes, cut_rows, cut_lengths, candidates, base = example
        logits = model.score_at_cuts(prefixes, cut_rows, cut_lengths, candidates)
        scores = residual_scores(base, logits, action_weights)
        valid = candidates.candidate_valid
        # The true item sits in slot 0 of every cut.
        value = listwise_loss(scores, jnp.zeros(valid.shape[:1], jnp.int32), valid)
        return value, {"loss": value, "targets": jnp.sum(valid[:, 0])}

    rng = np.random.default_rng([options.seed, 2])
    steps = math.ceil(len(sequences) / batch_size)
    # Cuts are user-major (user `i`'s are `i * cuts_per_user ...`), so a process's share of the
    # users and its share of the cuts are the same slice of each.
    cut_rows = np.repeat(np.arange(batch_size), cuts_per_user)

    def epoch_examples():
        order = rng.permutation(len(sequences))
        for index in range(steps):
            rows = padded_rows(
                order[index * batch_size : (index + 1) * batch_size], batch_size, len(sequences)
            )
            # A cut keeps a user's first `cut_items` items; the next one is its positive.
            cut_items = rng.integers(0, lengths[rows][:, None], (batch_size, cuts_per_user))
            if listwise:
                cut_items[:, 0] = lengths[rows] - 1
            cut_items = cut_items.reshape(-1)
            cut_users = rows[cut_rows]
            keep = np.arange(history_seq_len)[None, :] < cut_items[:, None]
            histories = np.where(keep, history_windows[cut_users], 0)
            positives = history_windows[cut_users, cut_items]
            retrieved, retrieved_scores, cut_vectors = retrieved_at_cuts(
                retriever,
                vectors,
                item_hashes,
                jnp.asarray(user_hashes[rows]),
                jnp.asarray(history_windows[rows]),
                jnp.asarray(cut_rows),
                jnp.asarray(cut_items),
                jnp.asarray(np.concatenate([histories, positives[:, None]], axis=1)),
                num_pool,
            )
            # Negatives drawn uniformly from what retrieval hands the ranker at serving time
            # (its top `num_retrieved`): negatives from its very top alone teach the ranker
            # that retrieval's favourites are wrong, and it then demotes the right item.
            picks = np.argsort(rng.random(retrieved.shape), axis=1)[:, :num_negatives]
            negatives = np.take_along_axis(np.asarray(retrieved), picks, axis=1)
            candidates = np.concatenate([positives[:, None], np.maximum(negatives, 0)], axis=1)
            candidates[positives == 0] = 0  # the all-padding row that fills the batch
            if listwise:
                base = np.asarray(
                    retrieval_logits(retriever, vectors, cut_vectors, jnp.asarray(candidates))
                )
                if options.num_retrieved <= num_pool:
                    # The true item is served if it beats retrieval's `num_retrieved`-th other.
                    served_logit = retrieved_scores[:, options.num_retrieved - 1]
                    served_logit = np.asarray(served_logit / retriever.temperature)
                    candidates[base[:, 0] < served_logit] = 0
                targets = np.where(candidates > 0, base, 0.0).astype(np.float32)
            else:
                targets = np.zeros((*candidates.shape, len(ACTIONS)), np.float32)
                targets[:, 0] = unpack_actions(action_windows[cut_users, cut_items])
            empty = np.zeros((batch_size, 0), np.int32)
            yield on_mesh(
                (
                    recsys_batch(
                        user_hashes[rows],
                        history_windows[rows],
                        empty,
                        item_hashes,
                        None if history_actions is None else history_actions[rows],
                    ),
                    jnp.asarray(cut_rows),
                    jnp.asarray(cut_items + 1),  # the user token and the kept items
                    recsys_batch(user_hashes[cut_users], histories, candidates, item_hashes),
                    jnp.asarray(targets),
                ),
                mesh,
            )

    def evaluate(model):
        return validation.metrics(retriever, model, options)

    epochs = options.ranker_epochs
    stage = options.stage(
        "ranker", options.ranker_learning_rate, epochs, steps, deadline, epoch_examples, evaluate
    )
    if listwise:
        return run_stage(ranker.with_zero_head(), listwise_objective, stage, run)
    return run_stage(ranker, bce_objective, stage, run)
