"""`Recommender.fit(..., mesh=...)`: data-parallel over 4 emulated CPU devices against one device.

The device count is fixed when jax initialises, and other test modules initialise it first in
this process, so both fits run in a subprocess (this file run as a module) that reports JSON.
"""

import json

import numpy as np
import pytest

from phoenix_eqx.recommender.retrieval_stage import length_bucketed_batches

from ..distributed.test_multiprocess import FAST_COMPILE
from ..helpers import run_on_cpu_devices

DEVICES = 4
NUM_USERS, NUM_ITEMS = 32, 30
# Batches of 16 sequences (width 16): every batch divides by the devices.
OPTIONS = dict(
    emb_size=8,
    key_size=4,
    num_heads=2,
    num_layers=1,
    history_seq_len=16,
    epochs=1,
    batch_size=16,
    learning_rate=1e-2,
    ranker_learning_rate=1e-2,
    # Each step's dropout key is replicated and its bits do not depend on the sharding.
    dropout=0.1,
    patience=5,
    ranker_epochs=1,
    ranker_candidates=4,
    ranker_positions_per_user=2,  # a step's cuts outnumber its users
    num_retrieved=8,
    verbose=False,
)


def _log() -> tuple[list[str], list[int], list[float]]:
    """Users walk the items in order from a random start, for 4 to 12 steps."""
    rng = np.random.default_rng(0)
    users, items, times = [], [], []
    for user in range(NUM_USERS):
        length = 4 + user % 9
        start = int(rng.integers(NUM_ITEMS))
        for step in range(length):
            users.append(f"user-{user}")
            items.append((start + step) % NUM_ITEMS)
            times.append(float(step))
    return users, items, times


def _worker() -> dict:
    import equinox as eqx
    import jax

    import phoenix_eqx as px
    from phoenix_eqx import distributed
    from phoenix_eqx.recommender.models import build_models

    mesh = distributed.global_mesh("batch")
    options = px.FitOptions(**OPTIONS)
    fits = [px.Recommender.fit(*_log(), options=options, mesh=m) for m in (None, mesh)]

    def params(models) -> np.ndarray:
        leaves = jax.tree.leaves(eqx.filter(models, eqx.is_array))
        return np.concatenate([np.ravel(np.asarray(leaf, np.float32)) for leaf in leaves])

    single, parallel = (params((rec.retriever, rec.ranker)) for rec in fits)
    initial = params(build_models(options, fits[0].features, key=jax.random.key(options.seed)))

    errors = {}
    for name, bad in (
        ("batch_size", dict(options=px.FitOptions(**{**OPTIONS, "batch_size": 6}), mesh=mesh)),
        ("mesh_axis", dict(options=options, mesh=distributed.global_mesh("rows"))),
    ):
        try:
            px.Recommender.fit(*_log(), **bad)
            errors[name] = ""
        except ValueError as error:
            errors[name] = str(error)
    return {
        "devices": len(jax.devices()),
        "validation": [rec.validation for rec in fits],
        "hr_history": [[record[1:] for record in rec.validation_history] for rec in fits],
        "param_diff": float(np.max(np.abs(single - parallel))),
        "param_change": float(np.max(np.abs(single - initial))),
        "kept_on_one_device": all(
            len(leaf.devices()) == 1
            for leaf in jax.tree.leaves(
                eqx.filter((fits[1].retriever, fits[1].ranker), eqx.is_array)
            )
        ),
        "errors": errors,
    }


@pytest.fixture(scope="module")
def report() -> dict:
    return run_on_cpu_devices(
        "tests.recommender.test_recommender_distributed", DEVICES, FAST_COMPILE
    )


def test_data_parallel_fit_equals_the_single_device_fit(report):
    assert report["devices"] == DEVICES
    single, parallel = report["hr_history"]
    assert [record[:2] for record in single] == [record[:2] for record in parallel]
    assert len(single) == OPTIONS["epochs"] + OPTIONS["ranker_epochs"] == 2
    assert [record[2] for record in single] == pytest.approx([record[2] for record in parallel])
    for stage in ("retrieval", "ranker"):
        single_metrics, parallel_metrics = (fit[stage] for fit in report["validation"])
        assert single_metrics == pytest.approx(parallel_metrics)
    # Adam divides by the gradients' root mean square, so where a gradient is near zero a
    # reduction-order difference in it moves a parameter by up to a share of the learning
    # rate (1e-2 here): 1% of it bounds that, far under what training moved (below).
    assert report["param_diff"] < 1e-4
    assert report["param_change"] > 1e-3  # training moved the parameters: not a vacuous match
    # Each process keeps its own replica on one device, as a single-device fit would.
    assert report["kept_on_one_device"]


def test_bad_meshes_are_named_before_training(report):
    assert report["errors"]["batch_size"] == (
        "options.batch_size: expected a multiple of the mesh's 4 devices, got 6"
    )
    assert report["errors"]["mesh_axis"].startswith("mesh: expected one axis named 'batch'")


def test_a_bucket_batch_rounds_down_to_a_multiple_of_the_devices():
    # Width 16 of a 24-long window: 4 * 24 // 16 = 6 sequences, 4 on a 4-device mesh.
    lengths = np.array([10] * 12)
    for multiple, size in ((1, 6), (4, 4)):
        batches = length_bucketed_batches(lengths, 24, 4, np.random.default_rng(0), multiple)
        assert {rows.size for rows, _ in batches} == {size}
        assert {width for _, width in batches} == {16}
        every_row = np.concatenate([rows for rows, _ in batches])
        assert sorted(every_row[every_row < lengths.size]) == list(range(lengths.size))


if __name__ == "__main__":
    print(json.dumps(_worker()))
