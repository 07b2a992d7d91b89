"""MovieLens-1M under the leave-two-out protocol: the test item (each user's last) is removed
before fit, which holds out the second-last as validation. Prints validation HR@10/NDCG@10."""

import dataclasses
import json
import sys
import time

import numpy as np

import phoenix_eqx as px
from phoenix_eqx.data import load_movielens_1m, load_movielens_100k

budget = float(sys.argv[1])
load = {"1m": load_movielens_1m, "100k": load_movielens_100k}[sys.argv[2]]
data = load()
order = np.lexsort((np.arange(data.num_interactions), data.timestamps, data.users))
sorted_users = data.users[order]
is_last = np.r_[sorted_users[1:] != sorted_users[:-1], True]
train = order[~is_last]  # everything but each user's test item
options = px.FitOptions(time_budget_s=budget)
print(dataclasses.asdict(options))
start = time.perf_counter()
rec = px.Recommender.fit(
    data.users[train],
    data.items[train],
    data.timestamps[train],
    data.ratings[train],
    options=options,
)
print(f"wall {time.perf_counter() - start:.0f}s")
print(json.dumps({"validation": rec.validation, "use_ranker": rec.use_ranker}))
