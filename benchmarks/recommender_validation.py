"""Validation HR@10 / NDCG@10 of `Recommender.fit` under the leave-two-out protocol: each
user's last item (test) is removed before fit, which then holds out the second-last as its
validation set. Test is never read. Used to choose `FitOptions` defaults (docs/training.md).
From the repository root:

    python -m benchmarks.recommender_validation 1m --budget 600 user_pooling='"last"' \\
        ranker_epochs=0

Extra arguments `field=value` override `FitOptions` fields (values are JSON).
"""

import argparse
import dataclasses
import json
import time

import numpy as np

import phoenix_eqx as px
from phoenix_eqx.data import load_movielens_1m, load_movielens_100k


def load(dataset: str) -> px.data.InteractionData:
    """MovieLens `"1m"` or `"100k"`."""
    return {"1m": load_movielens_1m, "100k": load_movielens_100k}[dataset]()


def without_test_items(data: px.data.InteractionData) -> np.ndarray:
    """Row indices of every interaction but each user's last (the test item)."""
    order = np.lexsort((np.arange(data.num_interactions), data.timestamps, data.users))
    sorted_users = data.users[order]
    is_last = np.r_[sorted_users[1:] != sorted_users[:-1], True]
    return order[~is_last]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", choices=["1m", "100k"])
    parser.add_argument("--budget", type=float, default=None, help="FitOptions.time_budget_s")
    parser.add_argument(
        "--save", default=None, metavar="DIR", help="save the fitted Recommender here"
    )
    parser.add_argument("overrides", nargs="*", metavar="field=value")
    args = parser.parse_intermixed_args()
    overrides = {}
    for item in args.overrides:
        name, _, value = item.partition("=")
        overrides[name] = json.loads(value)
    data = load(args.dataset)
    train = without_test_items(data)
    options = px.FitOptions(time_budget_s=args.budget, **overrides)
    print(json.dumps({"options": dataclasses.asdict(options)}))
    start = time.perf_counter()
    rec = px.Recommender.fit(
        data.users[train],
        data.items[train],
        data.timestamps[train],
        data.ratings[train],
        options=options,
    )
    wall = time.perf_counter() - start
    if args.save is not None:
        rec.save(args.save)
    print(
        json.dumps(
            {
                "dataset": args.dataset,
                "overrides": overrides,
                "wall_s": round(wall, 1),
                "validation": rec.validation,
                "use_ranker": rec.use_ranker,
                "history": rec.validation_history,
            }
        )
    )


if __name__ == "__main__":
    main()
