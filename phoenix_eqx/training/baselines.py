"""Simple retrieval baselines on a user x item interaction matrix (NumPy).

Each returns scores `[len(users), num_items + 1]` (column 0 is padding): higher is better.
"""

import numpy as np
from jaxtyping import Bool, Float, Int


def popularity_scores(
    matrix: Bool[np.ndarray, "all_users items"], users: Int[np.ndarray, " users"]
) -> Float[np.ndarray, "users items"]:
    """Every user gets the items' interaction counts."""
    counts = np.asarray(matrix, np.float64).sum(axis=0)
    return np.broadcast_to(counts, (len(users), counts.shape[0])).copy()


def item_knn_scores(
    matrix: Bool[np.ndarray, "all_users items"],
    users: Int[np.ndarray, " users"],
    neighbours: int = 100,
    shrinkage: float = 10.0,
) -> Float[np.ndarray, "users items"]:
    """Item-based k-nearest neighbours: cosine similarity of the items' user vectors, shrunk
    towards 0 for rare pairs, each item keeping its `neighbours` most similar items; a user's
    score for an item sums its similarities to the user's items."""
    x = np.asarray(matrix, np.float64)
    co_counts = x.T @ x
    norms = np.sqrt(np.diag(co_counts))
    similarity = co_counts / np.maximum(np.outer(norms, norms) + shrinkage, 1e-12)
    np.fill_diagonal(similarity, 0.0)
    if neighbours < similarity.shape[0]:
        weakest = np.argpartition(-similarity, neighbours, axis=0)[neighbours:]
        np.put_along_axis(similarity, weakest, 0.0, axis=0)
    return x[users] @ similarity


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
