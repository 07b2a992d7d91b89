"""Evaluation of trained models on a leave-last-out split: retrieval against the whole corpus,
ranking of the held-out item among unseen ones (beside a popularity scorer)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Float, Int

from ..data import SequenceSplit, eval_ranking_example, eval_users_batch
from ..inputs import RecsysBatch
from .metrics import ranking_metrics, relevance_from_targets, retrieval_metrics
from .models import TrainableRanker, TrainableRetriever

EVAL_CHUNK = 256


@eqx.filter_jit
def _encode_users(model: TrainableRetriever, batch: RecsysBatch):
    return model.user_vectors(batch)


@eqx.filter_jit
def _encode_items(model: TrainableRetriever, post_hashes, author_hashes):
    return model.encode_items(post_hashes, author_hashes)


@eqx.filter_jit
def _probabilities(model: TrainableRanker, batch: RecsysBatch):
    return jax.nn.sigmoid(model(batch).astype(jnp.float32))


def _chunks(users: np.ndarray):
    """Fixed-size chunks (the last padded by repeating users), so each jit compiles once."""
    for start in range(0, len(users), EVAL_CHUNK):
        chunk = users[start : start + EVAL_CHUNK]
        yield np.resize(chunk, EVAL_CHUNK), len(chunk)


def retrieval_scores(
    model: TrainableRetriever, split: SequenceSplit, users: Int[np.ndarray, " users"]
) -> Float[np.ndarray, "users items_plus_one"]:
    """Scores `[users, num_items + 1]` of every corpus item (column 0 is padding)."""
    data = split.data
    corpus = _encode_items(model, jnp.asarray(data.post_hashes), jnp.asarray(data.author_hashes))
    rows = []
    for chunk, size in _chunks(users):
        batch = eval_users_batch(split, chunk, model.config.history_seq_len)
        rows.append(np.asarray(_encode_users(model, batch) @ corpus.T)[:size])
    return np.concatenate(rows)


def evaluate_retrieval(
    scores: Float[np.ndarray, "users items_plus_one"],
    split: SequenceSplit,
    users: Int[np.ndarray, " users"],
) -> dict[str, float]:
    """Recall / HitRate / NDCG @ 10, 50, 100 of the held-out item, ranking every item but the
    user's training items."""
    relevant = relevance_from_targets(split.test_items[users], split.data.num_items + 1)
    exclude = split.train_matrix()[users]
    exclude[:, 0] = True
    return retrieval_metrics(scores, relevant, exclude)


def evaluate_ranking(
    model: TrainableRanker, split: SequenceSplit, users: Int[np.ndarray, " users"], seed: int
) -> dict[str, dict[str, dict[str, float]]]:
    """Per-action metrics of the held-out item among unseen items (all labels 0), for the model
    and for a popularity scorer (training counts; its ROC-AUC and PR-AUC only, as its scores
    are not probabilities)."""
    config = model.config
    probabilities, labels, valid, candidates = [], [], [], []
    for chunk, size in _chunks(users):
        example = eval_ranking_example(
            split, chunk, config.candidate_seq_len, config.history_seq_len, seed
        )
        probabilities.append(np.asarray(_probabilities(model, example.batch))[:size])
        labels.append(np.asarray(example.labels)[:size])
        valid.append(np.asarray(example.batch.candidate_valid)[:size])
        candidates.append(np.asarray(example.batch.candidate_post_hashes[..., 0])[:size])
    labels, valid = np.concatenate(labels), np.concatenate(valid)
    counts = split.train_matrix().sum(axis=0)
    # The first post hash is the item id in both datasets.
    popularity = counts[np.concatenate(candidates)] / counts.max()
    popularity = np.repeat(popularity[..., None], labels.shape[-1], axis=-1)
    return {
        "phoenix_ranker": ranking_metrics(np.concatenate(probabilities), labels, valid),
        "popularity": {
            action: {name: values[name] for name in ("roc_auc", "pr_auc")}
            for action, values in ranking_metrics(popularity, labels, valid).items()
        },
    }
