"""What verifying a saved `Recommender` costs: `Recommender.load` with and without `verify`.

A Recommender of MovieLens-1M's size (6,040 users, 3,706 items, the `FitOptions()` model sizes:
emb 64, 2 layers, history 200) with random histories of ML-1M's 1,000,209 interactions in all.
Its models are untrained: a trained model's files have the same sizes, and SHA-256 takes as
long over any bytes. It is saved once, then loaded `REPEATS` times each way, the ways
alternating so that drift in the machine's load hits all alike: `Recommender.load` (files to a
serving Recommender, item vectors included) and `persistence.load` (files to arrays alone),
with and without `verify`, and SHA-256 over the files' bytes alone; the median and the least
time of each. Prints one JSON object. From the repository root:

    python -m benchmarks.load_verification_timing [DIRECTORY]   # default: a temporary one
"""

import hashlib
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np

import phoenix_eqx as px
from benchmarks.timing import print_report_of
from phoenix_eqx.data.feature_hashes import feature_hashes
from phoenix_eqx.recommender import persistence
from phoenix_eqx.recommender.models import build_models

NUM_USERS, NUM_ITEMS, NUM_INTERACTIONS = 6_040, 3_706, 1_000_209  # MovieLens-1M
REPEATS = 15


def recommender(seed: int = 0) -> px.Recommender:
    """An untrained Recommender of MovieLens-1M's sizes, random histories."""
    rng = np.random.default_rng(seed)
    options = px.FitOptions()
    item_ids = list(range(1, NUM_ITEMS + 1))
    user_ids = list(range(1, NUM_USERS + 1))
    # Lengths summing to ML-1M's interactions, every user at least 20 (as in ML-1M).
    cuts = np.sort(rng.choice(NUM_INTERACTIONS - 20 * NUM_USERS, NUM_USERS - 1, replace=False))
    lengths = 20 + np.diff(np.concatenate([[0], cuts, [NUM_INTERACTIONS - 20 * NUM_USERS]]))
    histories = {
        user: rng.integers(1, NUM_ITEMS + 1, length).astype(np.int32)
        for user, length in zip(user_ids, lengths, strict=True)
    }
    features = feature_hashes(item_ids, user_ids)
    retriever, ranker = build_models(options, features, key=jax.random.key(seed))
    return px.Recommender(
        retriever,
        ranker,
        options,
        item_ids,
        histories,
        use_ranker=False,
        validation={},
        features=features,
    )


def _times(calls: dict[str, Callable[[], object]]) -> dict[str, dict[str, float]]:
    """Median and least seconds of each call over `REPEATS` rounds, the calls alternating in
    each round. On a shared machine the least is the better estimate of a call's own cost."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(REPEATS):
        for name, call in calls.items():
            start = time.perf_counter()
            jax.block_until_ready(call())
            times[name].append(time.perf_counter() - start)
    return {
        name: {"median_s": round(statistics.median(values), 4), "min_s": round(min(values), 4)}
        for name, values in times.items()
    }


def _arrays(saved: persistence.Saved) -> tuple:
    return (saved.retriever, saved.ranker)


def _hash_all(directory: Path) -> list[str]:
    return [
        hashlib.sha256((directory / name).read_bytes()).hexdigest()
        for name in (*persistence.DATA_FILES, persistence.MANIFEST)
    ]


def main(root: Path) -> dict:
    rec = recommender()
    directory = root / "model"
    start = time.perf_counter()
    rec.save(directory)
    save_s = time.perf_counter() - start
    # Warm-up: the item vectors' compilation, and the files in the page cache.
    px.Recommender.load(directory)
    # A Recommender computes its item vectors when built, asynchronously: waited for too.
    times = _times(
        {
            "recommender_load_verify": lambda: px.Recommender.load(directory)._item_vectors,
            "recommender_load_no_verify": lambda: (
                px.Recommender.load(directory, verify=False)._item_vectors
            ),
            "persistence_load_verify": lambda: _arrays(persistence.load(directory)),
            "persistence_load_no_verify": lambda: _arrays(
                persistence.load(directory, verify=False)
            ),
            "sha256_of_the_files": lambda: _hash_all(directory),
        }
    )
    return {
        "devices": [str(device) for device in jax.devices()],
        "sizes": "MovieLens-1M: 6,040 users, 3,706 items, 1,000,209 interactions; FitOptions()",
        "repeats": REPEATS,
        "file_bytes": {path.name: path.stat().st_size for path in sorted(directory.iterdir())},
        "save_s": round(save_s, 4),
        **times,
        "sha256_share_of_recommender_load_min": round(
            times["sha256_of_the_files"]["min_s"] / times["recommender_load_verify"]["min_s"], 3
        ),
    }


if __name__ == "__main__":
    print_report_of(main)
