"""Simple retrieval baselines on a user x item interaction matrix (NumPy), and their
evaluation on a leave-two-out split by the same full ranking as the models.

Each scorer returns scores `[len(users), num_items + 1]` (column 0 is padding): higher is
better. The models (counts, similarities, EASE weights) are fit on the training interactions
only; a user's input at evaluation is its history before the target, which at test time
includes the validation item.
"""

import argparse
import json
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
from jaxtyping import Bool, Float, Int
from scipy import sparse

from ..data.interactions import SequenceSplit, Stage, leave_last_out
from ..data.movielens import load_movielens_1m
from .metrics import FULL_RANKING_KS, full_ranking_metrics


def popularity_scores(
    matrix: Bool[np.ndarray, "all_users items"], users: Int[np.ndarray, " users"]
) -> Float[np.ndarray, "users items"]:
    """Every user gets the items' interaction counts."""
    counts = np.asarray(matrix, np.float64).sum(axis=0)
    return np.broadcast_to(counts, (len(users), counts.shape[0])).copy()


def item_similarity(
    matrix: Bool[np.ndarray, "all_users items"] | Float[np.ndarray, "all_users items"],
    neighbours: int = 100,
    shrinkage: float = 10.0,
) -> Float[np.ndarray, "items items"]:
    """Cosine similarity of the items' user vectors, shrunk towards 0 for rare pairs, each item
    keeping its `neighbours` most similar items (column `j`: the items similar to `j`)."""
    x = np.asarray(matrix, np.float64)
    co_counts = x.T @ x
    norms = np.sqrt(np.diag(co_counts))
    similarity = co_counts / np.maximum(np.outer(norms, norms) + shrinkage, 1e-12)
    np.fill_diagonal(similarity, 0.0)
    if neighbours < similarity.shape[0]:
        weakest = np.argpartition(-similarity, neighbours, axis=0)[neighbours:]
        np.put_along_axis(similarity, weakest, 0.0, axis=0)
    return similarity


class NeighbourLists(NamedTuple):
    """Each item row's most similar rows as compressed rows, in item order: row `j`'s
    neighbours are `ids[starts[j]:starts[j + 1]]` (increasing), their similarities
    `similarities[starts[j]:starts[j + 1]]` (row 0, padding, has none)."""

    starts: Int[np.ndarray, " items_plus_two"]
    ids: Int[np.ndarray, " pairs"]
    similarities: Float[np.ndarray, " pairs"]


def neighbour_lists(
    sequences: Sequence[Int[np.ndarray, " _length"]],
    num_items: int,
    neighbours: int = 100,
    shrinkage: float = 10.0,
    window: int = 0,
) -> NeighbourLists:
    """Each item's `neighbours` most similar items (similarity > 0; ties to the lower item) in
    the users' sequences (`sequences[u]`: user `u`'s items `1..num_items`, in time order).

    `window=0`: `item_similarity` of the users' item sets, two items co-occurring once per
    user who has both (the pairs grow with each sequence's length squared). `window=w`: two
    items co-occur each time they stand within `w` positions of each other in a sequence,
    the similarity `count / (sqrt(n_a * n_b) + shrinkage)` with `n` the items' occurrences
    (the pairs grow with interactions times `w`: for long sequences). Counted by sparse
    products and sorts, so memory grows with the pairs that occur, not `items ** 2`."""
    if neighbours < 1 or shrinkage < 0:
        raise ValueError(
            f"neighbours, shrinkage: expected >= 1 and >= 0, got {neighbours}, {shrinkage}"
        )
    if window < 0:
        raise ValueError(f"window: expected >= 0 (0: whole sequences), got {window}")
    flat = np.concatenate([np.asarray(s, np.int64) for s in sequences] + [np.zeros(0, np.int64)])
    if flat.size and (flat.min() < 1 or flat.max() > num_items):
        raise ValueError(
            f"sequences: expected items in 1..{num_items}, got {flat.min()}..{flat.max()}"
        )
    owners = np.repeat(np.arange(len(sequences)), [len(s) for s in sequences])
    if window == 0:
        matrix = sparse.csr_matrix(
            (np.ones(flat.size), (owners, flat)), shape=(len(sequences), num_items + 1)
        )
        matrix.data[:] = 1.0  # a user's repeated item counts once, as in the dense matrix
        co_counts = (matrix.T @ matrix).tocsr()
        co_counts.sort_indices()
        norms = np.sqrt(co_counts.diagonal())
        co_counts = co_counts.tocoo()
        rows, others, counts = co_counts.row, co_counts.col, co_counts.data
    else:
        rows, others, counts = _nearby_pairs(flat, owners, num_items, window)
        norms = np.sqrt(np.bincount(flat, minlength=num_items + 1).astype(np.float64))
    rows, others = rows.astype(np.int64), others.astype(np.int64)
    similarity = counts / (norms[rows] * norms[others] + shrinkage)
    keep = (rows != others) & (similarity > 0)
    rows, others, similarity = rows[keep], others[keep], similarity[keep]
    per_row = np.bincount(rows, minlength=num_items + 1)
    starts = np.concatenate([[0], np.cumsum(per_row)])
    # Only rows with more than `neighbours` entries lose some: each drops what ranks past
    # `neighbours` by similarity (a stable sort of a row in item order: ties to the lower).
    keep = np.ones(rows.size, bool)
    for row in np.flatnonzero(per_row > neighbours):
        begin, end = starts[row], starts[row + 1]
        weakest = np.argsort(-similarity[begin:end], kind="stable")[neighbours:]
        keep[begin + weakest] = False
    rows, others, similarity = rows[keep], others[keep], similarity[keep]
    starts = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=num_items + 1))])
    return NeighbourLists(starts, others.astype(np.int32), similarity.astype(np.float32))


def _nearby_pairs(
    flat: Int[np.ndarray, " interactions"],
    owners: Int[np.ndarray, " interactions"],
    num_items: int,
    window: int,
) -> tuple[Int[np.ndarray, " pairs"], Int[np.ndarray, " pairs"], Float[np.ndarray, " pairs"]]:
    """`(rows, others, counts)`: how often two items stand within `window` positions of each
    other in one sequence (`flat`, owned by `owners`), both ways, sorted by row then other."""
    keys = []
    for offset in range(1, window + 1):
        same = owners[:-offset] == owners[offset:]
        a, b = flat[:-offset][same], flat[offset:][same]
        keys.append(np.minimum(a, b) * (num_items + 1) + np.maximum(a, b))
    unordered, counts = np.unique(
        np.concatenate(keys + [np.zeros(0, np.int64)]), return_counts=True
    )
    low, high = np.divmod(unordered, num_items + 1)
    both = np.concatenate([low * (num_items + 1) + high, high * (num_items + 1) + low])
    order = np.argsort(both, kind="stable")
    rows, others = np.divmod(both[order], num_items + 1)
    return rows, others, np.concatenate([counts, counts])[order].astype(np.float64)


def item_knn_scores(
    matrix: Bool[np.ndarray, "all_users items"],
    users: Int[np.ndarray, " users"],
    neighbours: int = 100,
    shrinkage: float = 10.0,
) -> Float[np.ndarray, "users items"]:
    """Item-based k-nearest neighbours (`item_similarity`): a user's score for an item sums its
    similarities to the user's items."""
    x = np.asarray(matrix, np.float64)
    return x[users] @ item_similarity(x, neighbours, shrinkage)


def recency_profiles(
    histories: Int[np.ndarray, "users length"],
    lengths: Int[np.ndarray, " users"],
    num_items: int,
    window: int = 20,
    decay: float = 0.8,
) -> Float[np.ndarray, "users items_plus_one"]:
    """Each user's last `window` items (of `histories[u, :lengths[u]]`, in time order), the
    item `a` steps before the last weighted `decay ** a`; column 0 is padding."""
    histories, lengths = np.asarray(histories), np.asarray(lengths)
    if histories.ndim != 2 or lengths.shape != histories.shape[:1]:
        raise ValueError(
            f"lengths: expected shape ({histories.shape[0]},) for histories of shape "
            f"{histories.shape}, got {lengths.shape}"
        )
    if window < 1 or not 0.0 < decay <= 1.0:
        raise ValueError(f"window, decay: expected >= 1 and in (0, 1], got {window}, {decay}")
    age = lengths[:, None] - 1 - np.arange(histories.shape[1])[None, :]
    weights = np.where((age >= 0) & (age < window), decay ** np.maximum(age, 0), 0.0)
    profiles = np.zeros((histories.shape[0], num_items + 1))
    rows = np.broadcast_to(np.arange(histories.shape[0])[:, None], histories.shape)
    np.add.at(profiles, (rows, histories), weights)
    profiles[:, 0] = 0.0
    return profiles


def ease_weights(
    matrix: Bool[np.ndarray, "all_users items"], l2: float = 500.0
) -> Float[np.ndarray, "items items"]:
    """EASE (Steck, 2019): the item-item weights `B` minimising `|X - XB|^2 + l2 |B|^2` with a
    zero diagonal, in closed form: `P = (X'X + l2 I)^-1`, `B = I - P diag(1 / diag(P))`."""
    if l2 <= 0:
        raise ValueError(f"l2: expected > 0, got {l2}")
    x = np.asarray(matrix, np.float64)
    gram = x.T @ x
    gram[np.diag_indices_from(gram)] += l2
    precision = np.linalg.inv(gram)
    weights = -precision / np.diag(precision)[None, :]
    np.fill_diagonal(weights, 0.0)
    return weights


def svd_scores(
    matrix: Bool[np.ndarray, "all_users items"],
    users: Int[np.ndarray, " users"],
    rank: int = 32,
) -> Float[np.ndarray, "users items"]:
    """PureSVD: project each user's interaction row on the top `rank` right singular vectors
    of the interaction matrix (a rank-`rank` reconstruction of the row)."""
    x = np.asarray(matrix, np.float64)
    rank = min(rank, min(x.shape))
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    factors = vt[:rank]
    return (x[users] @ factors.T) @ factors


def split_full_ranking_metrics(
    score_users: Callable[[Int[np.ndarray, " chunk"]], Float[np.ndarray, "chunk items_plus_one"]],
    split: SequenceSplit,
    stage: Stage,
    ks: Sequence[int] = FULL_RANKING_KS,
    chunk_size: int = 256,
) -> dict[str, dict[str, float]]:
    """`full_ranking_metrics` of the `stage` targets of every evaluated user of `split`:
    `score_users(users)` scores all items for those user ids (column 0, padding, is never
    ranked), the user's history before the target is the seen set."""
    users = np.flatnonzero(split.evaluated)
    ranked = np.arange(split.data.num_items + 1) > 0
    return full_ranking_metrics(
        lambda rows: score_users(users[rows]),
        split.targets(stage)[users],
        split.history_matrix(stage)[users],
        ks,
        ranked_items=ranked,
        chunk_size=chunk_size,
    )


def _history_scorer(split: SequenceSplit, stage: Stage, item_weights: np.ndarray, **recency):
    """Scores of users' recency-weighted (or, without `recency`, plain) histories times item
    weights (`[items + 1, items + 1]`)."""
    lengths = split.history_lengths(stage)
    history = None if recency else split.history_matrix(stage)

    def score(users: np.ndarray) -> np.ndarray:
        if history is not None:
            return history[users].astype(np.float64) @ item_weights
        profile = recency_profiles(
            split.items[users], lengths[users], split.data.num_items, **recency
        )
        return profile @ item_weights

    return score


def leave_two_out_baselines(
    split: SequenceSplit,
    *,
    ease_l2: Sequence[float] = (100.0, 250.0, 500.0, 1000.0, 2000.0),
    knn_neighbours: Sequence[int] = (50, 200),
    knn_decays: Sequence[float] = (0.5, 0.7, 0.9),
    knn_window: int = 20,
    selection_metric: str = "hit_rate@10",
    log: Callable[[str], None] = lambda line: None,
) -> dict[str, dict]:
    """Popularity, recent item-kNN and EASE on a leave-two-out split, each tuned on validation.

    For each baseline every configuration of its grid is measured on validation; the one with
    the best `selection_metric` (history excluded) is then measured on test, once. Returns per
    baseline `{"config", "validation", "test", "seconds"}` (metrics as `full_ranking_metrics`).
    """
    if split.held_out != 2:
        raise ValueError(
            f"split: expected a leave-two-out split (held_out=2), got {split.held_out}"
        )
    train = split.train_matrix()
    counts = train.sum(axis=0).astype(np.float64)
    similarities = {n: item_similarity(train, n) for n in knn_neighbours}

    def popularity(stage: Stage, config: dict):
        return lambda users: np.broadcast_to(counts, (len(users), counts.size))

    def recent_knn(stage: Stage, config: dict):
        recency = {"window": knn_window, "decay": config["decay"]}
        return _history_scorer(split, stage, similarities[config["neighbours"]], **recency)

    def ease(stage: Stage, config: dict):
        return _history_scorer(split, stage, ease_weights(train, config["l2"]))

    grids = {
        "popularity": (popularity, [{}]),
        "recent_item_knn": (
            recent_knn,
            [{"neighbours": n, "decay": d} for n in knn_neighbours for d in knn_decays],
        ),
        "ease": (ease, [{"l2": l2} for l2 in ease_l2]),
    }
    results = {}
    for name, (scorer, configs) in grids.items():
        start = time.perf_counter()
        validation = []
        for config in configs:
            metrics = split_full_ranking_metrics(scorer("validation", config), split, "validation")
            validation.append(metrics)
            log(f"{name} {config} validation {metrics['seen_excluded'][selection_metric]:.4f}")
        best = int(np.argmax([m["seen_excluded"][selection_metric] for m in validation]))
        test = split_full_ranking_metrics(scorer("test", configs[best]), split, "test")
        results[name] = {
            "config": configs[best],
            "validation": validation[best],
            "test": test,
            "seconds": time.perf_counter() - start,
        }
        log(f"{name} {configs[best]} test {test['seen_excluded'][selection_metric]:.4f}")
    return results


def main() -> None:
    """`python -m phoenix_eqx.training.baselines [--data PATH]`: the baselines on MovieLens-1M
    under leave-two-out: one progress line per configuration, then the results as JSON."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--data", help="ml-1m directory or zip (default: the cached wheel)")
    args = parser.parse_args()
    start = time.perf_counter()
    split = leave_last_out(load_movielens_1m(args.data), held_out=2)
    results = leave_two_out_baselines(
        split, log=lambda line: print(f"[{time.perf_counter() - start:6.0f} s] {line}", flush=True)
    )
    print(json.dumps({"results": results, "seconds": time.perf_counter() - start}, indent=1))


if __name__ == "__main__":
    main()
