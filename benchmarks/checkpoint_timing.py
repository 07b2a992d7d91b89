"""Orbax checkpoint save and restore time and size on disk for the MovieLens-1M models.

The retrieval and ranking models `Recommender.fit` builds by default for MovieLens-1M (6,040
users, 3,706 items) with their optimiser state (global-norm clipping and Adam, after one
update): each saved `REPEATS` times as a training checkpoint (synchronous and asynchronous),
restored, and exported for serving (model arrays alone). Prints one JSON object. From the
repository root:

    python -m benchmarks.checkpoint_timing [DIRECTORY]   # default: a temporary directory
"""

import statistics
import time
from pathlib import Path

import jax

import phoenix_eqx as px
from benchmarks.timing import print_report_of
from phoenix_eqx.data.feature_hashes import feature_hashes
from phoenix_eqx.recommender.models import build_models
from phoenix_eqx.training import (
    CheckpointManager,
    export_model,
    init_optimizer,
    load_exported_model,
    trainable,
)

NUM_ITEMS = 3_706  # MovieLens-1M
REPEATS = 3


def _size(directory: Path) -> int:
    return sum(path.stat().st_size for path in directory.rglob("*") if path.is_file())


def _median_s(function) -> float:
    times = []
    for index in range(REPEATS):
        start = time.perf_counter()
        function(index)
        times.append(time.perf_counter() - start)
    return round(statistics.median(times), 4)


def measure(name: str, model, opt_state, root: Path) -> dict:
    arrays = jax.tree.leaves((model, opt_state))
    report = {
        "model_parameters": sum(leaf.size for leaf in jax.tree.leaves(model)),
        "state_bytes_in_memory": sum(leaf.nbytes for leaf in arrays),
    }
    with CheckpointManager(root / name / "sync", max_to_keep=REPEATS) as checkpoints:
        checkpoints.save(0, model, opt_state)  # warm-up: Orbax's first save sets things up
        report["save_s"] = _median_s(lambda index: checkpoints.save(index + 1, model, opt_state))
        report["checkpoint_bytes_on_disk"] = _size(root / name / "sync" / str(REPEATS))
        report["restore_s"] = _median_s(
            lambda _: jax.block_until_ready(checkpoints.restore(model, opt_state).model)
        )
    with CheckpointManager(root / name / "async", async_save=True) as checkpoints:
        checkpoints.save(0, model, opt_state)
        checkpoints.wait()
        blocking, total = [], []
        for index in range(REPEATS):
            start = time.perf_counter()
            checkpoints.save(index + 1, model, opt_state)
            blocking.append(time.perf_counter() - start)  # training could go on from here
            checkpoints.wait()
            total.append(time.perf_counter() - start)
        report["async_save_blocking_s"] = round(statistics.median(blocking), 4)
        report["async_save_total_s"] = round(statistics.median(total), 4)
    report["export_s"] = _median_s(
        lambda index: export_model(root / name / f"export{index}", model)
    )
    report["export_bytes_on_disk"] = _size(root / name / "export0")
    report["load_export_s"] = _median_s(
        lambda _: jax.block_until_ready(load_exported_model(root / name / "export0", model))
    )
    return report


def main(root: Path) -> dict:
    options = px.FitOptions()
    ids_only = feature_hashes(list(range(NUM_ITEMS)), [])
    retriever, ranker = build_models(options, ids_only, key=jax.random.key(options.seed))
    optimizer = options.schedule().optimizer()
    report = {
        "devices": [str(device) for device in jax.devices()],
        "options": "FitOptions() defaults",
        "repeats": REPEATS,
    }
    for name, model in (("retrieval", retriever), ("ranking", ranker)):
        # After one update (the parameters standing in for gradients): non-zero moments, which
        # compress as little as a trained state's, where a fresh state's zeros would vanish.
        params = trainable(model)
        _, opt_state = optimizer.update(params, init_optimizer(optimizer, model), params)
        report[name] = measure(name, model, opt_state, root)
    return report


if __name__ == "__main__":
    print_report_of(main)
