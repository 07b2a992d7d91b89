"""Evaluation metrics (NumPy, float64): ranking quality per action, retrieval over a corpus.

Ties are scored by their expectation under a random tie-break, so a constant scorer gets
exactly the chance level and no metric depends on the order of users or items.
"""

import math
from collections.abc import Callable, Sequence

import numpy as np
from jaxtyping import Bool, Float, Int

from ..config import ACTIONS

RETRIEVAL_KS: tuple[int, ...] = (10, 50, 100)
_NAMES = ("recall", "hit_rate", "ndcg")
PROBABILITY_CLIP = 1e-7


def _pair(scores, labels, name: str) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    if scores.shape != labels.shape:
        raise ValueError(f"{name}: expected as many labels as scores, got {labels.shape}")
    if scores.size and not np.all((labels == 0) | (labels == 1)):
        raise ValueError(f"{name}: expected binary labels (0 or 1)")
    return scores, labels.astype(bool)


def roc_auc(scores: Float[np.ndarray, " n"], labels: Float[np.ndarray, " n"]) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties count half); NaN without both classes."""
    scores, labels = _pair(scores, labels, "labels")
    # NaN has no rank: np.unique would sort it above every score.
    if np.isnan(scores).any():
        raise ValueError(f"scores: expected no NaN, got {int(np.isnan(scores).sum())} NaN scores")
    num_pos, num_neg = int(labels.sum()), int((~labels).sum())
    if num_pos == 0 or num_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    # Mid-ranks: a tied group shares the mean of the ranks it spans.
    mid_ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]
    rank_sum = mid_ranks[labels].sum()
    return float((rank_sum - num_pos * (num_pos + 1) / 2.0) / (num_pos * num_neg))


def pr_auc(scores: Float[np.ndarray, " n"], labels: Float[np.ndarray, " n"]) -> float:
    """Average precision: precision summed over the recall steps, tied scores forming one
    step; NaN without positives. A constant scorer gets the positive rate, a perfect one 1."""
    scores, labels = _pair(scores, labels, "labels")
    num_pos = int(labels.sum())
    if num_pos == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    sorted_scores, sorted_labels = scores[order], labels[order]
    # Thresholds sit at the last item of every group of equal scores.
    group_end = np.r_[sorted_scores[1:] != sorted_scores[:-1], True]
    true_pos = np.cumsum(sorted_labels)[group_end]
    seen = (np.arange(scores.size) + 1)[group_end]
    precision = true_pos / seen
    recall_step = np.diff(np.r_[0, true_pos]) / num_pos
    return float(np.sum(precision * recall_step))


def log_loss(probabilities: Float[np.ndarray, " n"], labels: Float[np.ndarray, " n"]) -> float:
    """Mean binary cross-entropy of probabilities (clipped to [1e-7, 1 - 1e-7])."""
    p, labels = _pair(probabilities, labels, "labels")
    if p.size == 0:
        return float("nan")
    p = np.clip(p, PROBABILITY_CLIP, 1 - PROBABILITY_CLIP)
    return float(-np.mean(np.where(labels, np.log(p), np.log1p(-p))))


def calibration(probabilities: Float[np.ndarray, " n"], labels: Float[np.ndarray, " n"]) -> float:
    """Mean predicted probability over the observed positive rate (1 = calibrated on
    average); NaN without positives."""
    p, labels = _pair(probabilities, labels, "labels")
    if not labels.any():
        return float("nan")
    return float(p.mean() / labels.mean())


def ranking_metrics(
    probabilities: Float[np.ndarray, "batch candidates actions"],
    labels: Float[np.ndarray, "batch candidates actions"],
    candidate_valid: Bool[np.ndarray, "batch candidates"],
    action_names: Sequence[str] = ACTIONS,
) -> dict[str, dict[str, float]]:
    """Per action (over all valid candidates): `roc_auc`, `pr_auc`, `log_loss`, `calibration`
    and `positive_rate`. Actions whose labels are all one class are left out."""
    probabilities, labels = np.asarray(probabilities), np.asarray(labels)
    valid = np.asarray(candidate_valid, bool)
    if probabilities.shape != labels.shape or probabilities.ndim != 3:
        raise ValueError(
            f"labels: expected shape {probabilities.shape} like probabilities, got {labels.shape}"
        )
    if valid.shape != probabilities.shape[:2]:
        raise ValueError(
            f"candidate_valid: expected shape {probabilities.shape[:2]}, got {valid.shape}"
        )
    if len(action_names) < probabilities.shape[2]:
        raise ValueError(
            f"action_names: expected {probabilities.shape[2]} names, got {len(action_names)}"
        )
    results = {}
    for index in range(probabilities.shape[2]):
        p, y = probabilities[..., index][valid], labels[..., index][valid]
        if y.size == 0 or y.min() == y.max():
            continue
        results[action_names[index]] = {
            "roc_auc": roc_auc(p, y),
            "pr_auc": pr_auc(p, y),
            "log_loss": log_loss(p, y),
            "calibration": calibration(p, y),
            "positive_rate": float(np.mean(y)),
        }
    return results


def _discount_sums(length: int) -> np.ndarray:
    """`D[p] = sum_{q <= p} 1 / log2(q + 1)`, with `D[0] = 0`."""
    return np.r_[0.0, np.cumsum(1.0 / np.log2(np.arange(2, length + 2)))]


def _log_choose(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def per_user_retrieval_metrics(
    scores: Float[np.ndarray, "users items"],
    relevant: Bool[np.ndarray, "users items"],
    exclude: Bool[np.ndarray, "users items"] | None = None,
    ks: Sequence[int] = RETRIEVAL_KS,
) -> dict[str, np.ndarray]:
    """Recall@K, HitRate@K and NDCG@K of each user, ranking every non-excluded item.

    `relevant` marks each user's held-out items, `exclude` items never to rank (e.g. the
    user's history); an item both relevant and excluded counts as neither. Users with no
    relevant item get NaN. Ties count in expectation over random tie-breaks.
    """
    scores = np.asarray(scores, np.float64)
    relevant = np.asarray(relevant, bool)
    if scores.ndim != 2:
        raise ValueError(f"scores: expected [users, items], got shape {scores.shape}")
    if relevant.shape != scores.shape:
        raise ValueError(f"relevant: expected shape {scores.shape}, got {relevant.shape}")
    if exclude is None:
        exclude = np.zeros(scores.shape, bool)
    exclude = np.asarray(exclude, bool)
    if exclude.shape != scores.shape:
        raise ValueError(f"exclude: expected shape {scores.shape}, got {exclude.shape}")
    if np.isnan(scores).any():
        raise ValueError("scores: expected no NaN")
    for k in ks:
        if not isinstance(k, int | np.integer) or k < 1:
            raise ValueError(f"ks: expected positive ints, got {k!r}")
    relevant = relevant & ~exclude
    num_users, num_items = scores.shape
    discounts = _discount_sums(num_items)
    out = {f"{name}@{k}": np.full(num_users, np.nan) for k in ks for name in _NAMES}
    for user in range(num_users):
        keep = ~exclude[user]
        user_scores, user_relevant = scores[user, keep], relevant[user, keep]
        num_relevant = int(user_relevant.sum())
        if num_relevant == 0:
            continue
        target_scores = user_scores[user_relevant]
        ranked = np.sort(user_scores)
        # For each relevant item: how many rank strictly above it, how many tie with it.
        above = user_scores.size - np.searchsorted(ranked, target_scores, side="right")
        ties = np.searchsorted(ranked, target_scores, side="right") - np.searchsorted(
            ranked, target_scores, side="left"
        )
        for k in ks:
            hit_probability, expected_gain = _tied_position_gains(above, ties, k, discounts)
            ideal = discounts[min(num_relevant, k)]
            out[f"recall@{k}"][user] = hit_probability.sum() / num_relevant
            out[f"ndcg@{k}"][user] = expected_gain.sum() / ideal
            out[f"hit_rate@{k}"][user] = _hit_rate(user_scores, user_relevant, k)
    return out


def _tied_position_gains(
    above: np.ndarray, ties: np.ndarray, k: int, discounts: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """P(in the top k) and expected discount `1/log2(position+1)` within the top k of items
    with `above` items scored strictly higher and `ties` (themselves included) scored the same:
    under a random tie-break the position is uniform over above+1 .. above+ties."""
    last = np.clip(k, above, above + ties)
    return (last - above) / ties, (discounts[last] - discounts[above]) / ties


def _hit_rate(scores: np.ndarray, relevant: np.ndarray, k: int) -> float:
    """P(some relevant item in the top k) under random tie-breaks."""
    if k >= scores.size:
        return 1.0
    threshold = np.sort(scores)[::-1][k - 1]
    if relevant[scores > threshold].any():
        return 1.0
    tied = scores == threshold
    slots = k - int((scores > threshold).sum())
    num_tied, num_relevant_tied = int(tied.sum()), int(relevant[tied].sum())
    if num_relevant_tied == 0:
        return 0.0
    if num_tied - num_relevant_tied < slots:
        return 1.0
    # 1 - P(all `slots` drawn from the tied group miss every relevant item).
    miss = _log_choose(num_tied - num_relevant_tied, slots) - _log_choose(num_tied, slots)
    return 1.0 - math.exp(miss)


def retrieval_metrics(
    scores: Float[np.ndarray, "users items"],
    relevant: Bool[np.ndarray, "users items"],
    exclude: Bool[np.ndarray, "users items"] | None = None,
    ks: Sequence[int] = RETRIEVAL_KS,
) -> dict[str, float]:
    """Means over users (with a relevant item) of `per_user_retrieval_metrics`."""
    per_user = per_user_retrieval_metrics(scores, relevant, exclude, ks)
    return {name: _nan_mean(values) for name, values in per_user.items()}


def _nan_mean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else float("nan")


def relevance_from_targets(
    targets: Int[np.ndarray, " users"], num_items: int
) -> Bool[np.ndarray, "users items"]:
    """One held-out item per user as a `[users, num_items]` mask (target < 0: none)."""
    targets = np.asarray(targets)
    if targets.size and targets.max() >= num_items:
        raise ValueError(f"targets: expected ids < num_items={num_items}, got {targets.max()}")
    mask = np.zeros((targets.shape[0], num_items), bool)
    has = targets >= 0
    mask[np.flatnonzero(has), targets[has]] = True
    return mask


FULL_RANKING_KS: tuple[int, ...] = (10, 20, 50)
ScoreRows = Callable[[Int[np.ndarray, " chunk"]], Float[np.ndarray, "chunk items"]]


def full_ranking_metrics(
    scores: Float[np.ndarray, "users items"] | ScoreRows,
    targets: Int[np.ndarray, " users"],
    seen: Bool[np.ndarray, "users items"],
    ks: Sequence[int] = FULL_RANKING_KS,
    *,
    ranked_items: Bool[np.ndarray, " items"] | None = None,
    chunk_size: int = 256,
) -> dict[str, dict[str, float]]:
    """`full_ranking_per_user`'s metrics averaged over the users each counts."""
    return users_mean(
        full_ranking_per_user(
            scores, targets, seen, ks, ranked_items=ranked_items, chunk_size=chunk_size
        )
    )


def users_mean(
    per_user: dict[str, dict[str, Float[np.ndarray, " users"]]],
) -> dict[str, dict[str, float]]:
    """`full_ranking_per_user`'s figures averaged over the users each mode counts."""
    return {
        mode: {name: _nan_mean(values) for name, values in metrics.items()}
        for mode, metrics in per_user.items()
    }


def full_ranking_per_user(
    scores: Float[np.ndarray, "users items"] | ScoreRows,
    targets: Int[np.ndarray, " users"],
    seen: Bool[np.ndarray, "users items"],
    ks: Sequence[int] = FULL_RANKING_KS,
    *,
    ranked_items: Bool[np.ndarray, " items"] | None = None,
    chunk_size: int = 256,
) -> dict[str, dict[str, Float[np.ndarray, " users"]]]:
    """HitRate@K and NDCG@K of one held-out item per user, ranking the whole corpus: each
    user's own figure (NaN where the user does not count), for averages and paired
    comparisons (`paired_difference`).

    `scores`: the `[users, items]` scores, or a function of row indices (at most `chunk_size`
    of `0..users-1`) returning those rows' scores, so that all scores never exist at once.
    `targets[u]`: user u's held-out item; `seen[u]`: the items u interacted with before it.
    `ranked_items`: the items that take part (None: all; e.g. False for a padding column);
    every target must be one of them.

    Returns `{"seen_excluded": m, "seen_included": m}`, `m` holding `hit_rate@K` and `ndcg@K`
    per user: with each user's seen items removed from the ranking, and ranked like
    any other item. With one target per user HitRate@K = Recall@K. A target among the user's
    seen items cannot be recommended once they are excluded: such a user counts in
    `seen_included` only (as in `per_user_retrieval_metrics`, relevant and excluded counts as
    neither).

    Ties count by exact expectation, as everywhere in this module: a target tied with others
    sits at each of their positions with equal probability (a random tie-break, averaged), so
    constant scores give exactly the chance level and item order never matters.
    """
    targets, seen = np.asarray(targets), np.asarray(seen, bool)
    if targets.ndim != 1:
        raise ValueError(f"targets: expected shape (users,), got {targets.shape}")
    if seen.ndim != 2 or seen.shape[0] != targets.shape[0]:
        raise ValueError(f"seen: expected shape ({targets.shape[0]}, items), got {seen.shape}")
    num_users, num_items = seen.shape
    ranked = np.ones(num_items, bool) if ranked_items is None else np.asarray(ranked_items, bool)
    if ranked.shape != (num_items,):
        raise ValueError(f"ranked_items: expected shape ({num_items},), got {ranked.shape}")
    if num_users and (targets.min() < 0 or targets.max() >= num_items):
        raise ValueError(
            f"targets: expected ids in [0, {num_items}), got [{targets.min()}, {targets.max()}]"
        )
    if not ranked[targets].all():
        raise ValueError(f"targets: expected ranked items, got {targets[~ranked[targets]]}")
    for k in ks:
        if not isinstance(k, int | np.integer) or k < 1:
            raise ValueError(f"ks: expected positive ints, got {k!r}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size: expected at least 1, got {chunk_size}")
    # A k given twice is one metric: each user's figure is appended once per k below.
    ks = tuple(dict.fromkeys(int(k) for k in ks))
    if callable(scores):
        score_rows = scores
    else:
        matrix = np.asarray(scores)
        if matrix.shape != seen.shape:
            raise ValueError(f"scores: expected shape {seen.shape} like seen, got {matrix.shape}")
        score_rows = matrix.__getitem__

    discounts = _discount_sums(int(ranked.sum()))
    modes = ("seen_excluded", "seen_included")
    per_user = {mode: {f"{n}@{k}": [] for k in ks for n in ("hit_rate", "ndcg")} for mode in modes}
    for start in range(0, num_users, chunk_size):
        rows = np.arange(start, min(start + chunk_size, num_users))
        chunk = np.asarray(score_rows(rows), np.float64)
        if chunk.shape != (rows.size, num_items):
            raise ValueError(f"scores: expected ({rows.size}, {num_items}) rows, got {chunk.shape}")
        if np.isnan(chunk).any():
            raise ValueError("scores: expected no NaN")
        target_scores = chunk[np.arange(rows.size), targets[rows], None]
        for mode, competing in zip(modes, (ranked & ~seen[rows], ranked[None]), strict=True):
            counted = np.broadcast_to(competing, chunk.shape)[np.arange(rows.size), targets[rows]]
            above = ((chunk > target_scores) & competing).sum(axis=1)
            ties = np.maximum(((chunk == target_scores) & competing).sum(axis=1), 1)
            for k in ks:
                hit, gain = _tied_position_gains(above, ties, k, discounts)
                per_user[mode][f"hit_rate@{k}"].append(np.where(counted, hit, np.nan))
                per_user[mode][f"ndcg@{k}"].append(np.where(counted, gain, np.nan))
    return {
        mode: {name: np.concatenate(values or [[]]) for name, values in metrics.items()}
        for mode, metrics in per_user.items()
    }


def ranked_list_per_user(
    found: Int[np.ndarray, "users listed"], targets: Int[np.ndarray, " users"], k: int
) -> dict[str, Float[np.ndarray, " users"]]:
    """Each user's HitRate@k and NDCG@k of one held-out item from its top-`k` list
    (`found[u]`, best first; a corpus of fewer than k items: a column per item): the figures
    `full_ranking_per_user` gives for scores without ties."""
    found, targets = np.asarray(found), np.asarray(targets)
    if found.ndim != 2 or found.shape[0] != targets.shape[0] or found.shape[1] > k:
        raise ValueError(f"found: expected shape ({targets.shape[0]}, <={k}), got {found.shape}")
    hits = found == targets[:, None]
    gains = hits / np.log2(np.arange(2, found.shape[1] + 2))[None, :]
    return {f"hr@{k}": hits.any(axis=1).astype(np.float64), f"ndcg@{k}": gains.sum(1)}


def paired_difference(
    first: Float[np.ndarray, " users"], second: Float[np.ndarray, " users"]
) -> dict[str, float]:
    """The mean of `first - second` over the users both count (NaN: not counted) and its
    standard error, `std(differences) / sqrt(users)`: how two models' per-user metrics on
    the same users differ, with the noise the users' own spread leaves in that mean."""
    first, second = np.asarray(first, np.float64), np.asarray(second, np.float64)
    if first.shape != second.shape or first.ndim != 1:
        raise ValueError(
            f"second: expected shape {first.shape} like first (one figure per user), "
            f"got {second.shape}"
        )
    differences = (first - second)[~(np.isnan(first) | np.isnan(second))]
    if differences.size < 2:
        raise ValueError(
            f"first: expected two or more users counted by both, got {differences.size}"
        )
    return {
        "difference": float(differences.mean()),
        "standard_error": float(differences.std(ddof=1) / np.sqrt(differences.size)),
        "users": float(differences.size),
    }
