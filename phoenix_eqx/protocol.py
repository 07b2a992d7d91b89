"""The leave-two-out protocol of the published MovieLens-1M results, for any `Recommender`.

Per user, interactions sorted by time (ties keep file order): the last item is the test item,
the second-last the validation item, the rest training. Each user's test item is removed,
`Recommender.fit` trains both stages on the rest (holding out the second-last items as its
validation set, the only data used for early stopping and model selection), then the test
items are evaluated once per reported row, ranking all items with the user's history excluded
and not excluded (HR and NDCG at 10, 20, 50), beside popularity, recent item-kNN and EASE
chosen on the same validation items.
"""

from collections.abc import Sequence

import numpy as np

from .data import SequenceSplit
from .recommender import Recommender
from .training import FULL_RANKING_KS, full_ranking_per_user

BASELINE_NAMES = {
    "popularity": "popularity",
    "recent_item_knn": "recent item-kNN",
    "ease": "EASE",
}
MODES = ("seen_excluded", "seen_included")
DESCRIPTION = {
    "name": "leave-two-out",
    "order": "per user by timestamp, ties in file order (stable sort)",
    "test": "each user's last item, evaluated once per reported row",
    "validation": "each user's second-last item: fit's held-out set, the only data "
    "used for early stopping and model selection",
    "ranking": "full corpus, every item",
    "ks": [10, 20, 50],
    "modes": {
        "seen_excluded": "the user's history (items before the test item) excluded",
        "seen_included": "the user's history ranked like any other item",
    },
    "ranker_over_full_corpus": "the num_retrieved items retrieval returns in the "
    "ranker's order, then every other item in retrieval's order",
}


def fit_interactions(split: SequenceSplit) -> np.ndarray:
    """Row indices of `split.data` that fit may see: every evaluated user's interactions but
    its last (the test item), in the split's order (by user, then time, ties in file order)."""
    data = split.data
    order = np.lexsort((np.arange(data.num_interactions), data.timestamps, data.users))
    users = data.users[order]
    is_last = np.r_[users[1:] != users[:-1], True]
    return order[~is_last & split.evaluated[users]]


def recommender_test_per_user(
    rec: Recommender,
    split: SequenceSplit,
    use_ranker: bool,
    ks: Sequence[int] = FULL_RANKING_KS,
) -> dict[str, dict[str, np.ndarray]]:
    """`full_ranking_per_user` of every evaluated user's test item, ranking all items by
    `rec.score_items` (see there for how retrieval + ranker orders the whole corpus).

    A user's history is its items before the test item (training plus validation item);
    items the model never saw in fit are dropped from it and score -inf. `seen_excluded`
    scores with `exclude_seen=True` (history neither retrieved nor ranked), `seen_included`
    with `exclude_seen=False`.
    """
    users = split.test_users
    history_lengths = split.history_lengths("test")
    known = np.zeros(split.data.num_items + 1, bool)
    columns = np.asarray(rec.item_ids, np.int64)
    known[columns] = True
    histories = [
        [int(item) for item in split.items[user, : history_lengths[user]] if known[item]]
        for user in users
    ]
    results = {}
    for mode in MODES:

        def scores(rows: np.ndarray, exclude_seen: bool = mode == "seen_excluded") -> np.ndarray:
            full = np.full((rows.size, split.data.num_items + 1), -np.inf)
            full[:, columns] = rec.score_items(
                users[rows].tolist(),
                [histories[row] for row in rows],
                exclude_seen,
                use_ranker=use_ranker,
            )
            return full

        per_user = full_ranking_per_user(
            scores,
            split.test_items[users],
            split.history_matrix("test")[users],
            ks,
            ranked_items=np.arange(split.data.num_items + 1) > 0,
        )
        results[mode] = per_user[mode]
    return results
