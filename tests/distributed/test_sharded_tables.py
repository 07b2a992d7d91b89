"""Row-sharded hash embedding tables on 8 emulated CPU devices, and row-wise Adagrad.

The sharded checks run in a subprocess (this file run as a script, with the suite's runtime
type checks), since the device count is fixed when jax initialises; it reports JSON. The
optimiser's own checks run here on one device.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ..helpers import run_on_cpu_devices

DEVICES = 8
ROWS = 64  # divisible by the 8 devices; above the 50 ids of `example_inputs`


def _worker() -> dict:
    from jaxtyping import install_import_hook

    with install_import_hook("phoenix_eqx", "beartype.beartype"):
        import phoenix_eqx as px
        from phoenix_eqx import distributed
        from phoenix_eqx.training import (
            RankingExample,
            TrainableRanker,
            init_optimizer,
            make_train_step,
            ranking_objective,
            rowwise_adagrad_for_tables,
        )
    import equinox as eqx
    from hypothesis import example, given, settings
    from hypothesis import strategies as st
    from hypothesis.extra.numpy import arrays
    from jax.sharding import AxisType, NamedSharding, PartitionSpec

    from phoenix_eqx.embedding import lookup_rows
    from tests.helpers import tiny_ranker_config

    def max_diff(a, b) -> float:
        return float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))))

    results: dict = {"devices": len(jax.devices())}
    mesh = distributed.make_mesh("table")
    table = jax.random.normal(jax.random.key(0), (ROWS, 8))
    sharded_table = jax.device_put(table, NamedSharding(mesh, PartitionSpec("table")))
    weights = jax.random.normal(jax.random.key(1), (5, 7, 8))

    def weighted_sum(lookup):
        return lambda table, ids: jnp.sum(lookup(table, ids) * weights)

    def sharded(table, ids):
        return px.nn.sharded_lookup_rows(table, ids, mesh=mesh, axis_name="table", name="ids")

    def unsharded(table, ids):
        return lookup_rows(table, ids, "ids")

    sharded_jit = jax.jit(sharded)
    sharded_value_and_grad = jax.jit(jax.value_and_grad(weighted_sum(sharded)))
    value_and_grad = jax.jit(jax.value_and_grad(weighted_sum(unsharded)))
    lookup_diffs, grad_diffs = [], []

    @settings(max_examples=8, deadline=None, derandomize=True, database=None)
    @given(arrays(np.int32, (5, 7), elements=st.integers(0, ROWS - 1)))
    @example(np.tile(np.array([0, 0, 1, 7, 8, 63, 8], np.int32), (5, 1)))  # padding, repeats
    def lookups_match(ids):
        ids = jnp.asarray(ids)
        lookup_diffs.append(max_diff(sharded_jit(sharded_table, ids), unsharded(table, ids)))
        (_, grad), (_, expected_grad) = (
            sharded_value_and_grad(sharded_table, ids),
            value_and_grad(table, ids),
        )
        grad_diffs.append(max_diff(grad, expected_grad))
        results["grad_spec"] = str(grad.sharding.spec)

    lookups_match()
    results["lookup_diff"], results["grad_diff"] = max(lookup_diffs), max(grad_diffs)
    results["lookup_examples"] = len(lookup_diffs)

    # Ids split over the batch axis of a (batch, table) mesh stay split.
    mesh_2d = jax.make_mesh((2, 4), ("batch", "table"), (AxisType.Auto, AxisType.Auto))
    table_2d = jax.device_put(table, NamedSharding(mesh_2d, PartitionSpec("table")))
    ids = jax.random.randint(jax.random.key(2), (4, 7), 0, ROWS)
    ids_2d = jax.device_put(ids, NamedSharding(mesh_2d, PartitionSpec("batch")))
    rows_2d = jax.jit(px.nn.sharded_lookup_rows, static_argnames=("mesh", "axis_name", "name"))(
        table_2d, ids_2d, mesh=mesh_2d, axis_name="table", name="ids"
    )
    results["lookup_2d_diff"] = max_diff(rows_2d, unsharded(table, ids))
    results["lookup_2d_spec"] = str(rows_2d.sharding.spec)

    config = tiny_ranker_config(history=3, candidates=2, num_layers=1)
    model = TrainableRanker(config, ROWS, ROWS, ROWS, key=jax.random.key(3))
    sharded_model = px.nn.shard_tables(model, mesh)
    results["tables_type"] = type(sharded_model.tables).__name__
    results["shard_rows"] = sorted(
        {shard.data.shape[0] for shard in sharded_model.tables.post_table.addressable_shards}
    )
    batch = _random_batch(config, users=4, candidates=2)
    labels = jax.random.bernoulli(jax.random.key(4), 0.3, (4, 2, config.num_actions))
    train_example = RankingExample(batch=batch, labels=labels.astype(jnp.float32))
    optimizer = rowwise_adagrad_for_tables(optax.adam(1e-2), 0.1)
    step = make_train_step(ranking_objective, optimizer)
    stepped = {}
    for label, start in (("sharded", sharded_model), ("unsharded", model)):
        stepped[label] = step(start, init_optimizer(optimizer, start), train_example)
    (new_sharded, sharded_state, aux), (new_model, _, expected_aux) = (
        stepped["sharded"],
        stepped["unsharded"],
    )
    results["loss_diff"] = max_diff(aux["loss"], expected_aux["loss"])
    params = [jax.tree.leaves(eqx.filter(m, eqx.is_array)) for m in (new_sharded, new_model)]
    results["step_param_diff"] = max(map(max_diff, *params))
    results["step_table_spec"] = str(new_sharded.tables.post_table.sharding.spec)
    accumulators = sharded_state.inner_states["tables"].inner_state.accumulators
    results["accumulator_spec"] = str(accumulators.tables.post_table.sharding.spec)

    looked_up = {
        "user_table": batch.user_hashes,
        "post_table": jnp.concatenate(
            [batch.history_post_hashes.ravel(), batch.candidate_post_hashes.ravel()]
        ),
        "author_table": jnp.concatenate(
            [batch.history_author_hashes.ravel(), batch.candidate_author_hashes.ravel()]
        ),
    }
    for field, ids in looked_up.items():
        before = np.asarray(getattr(sharded_model.tables, field))
        after = np.asarray(getattr(new_sharded.tables, field))
        changed = np.flatnonzero(np.any(before != after, axis=1))
        results[f"changed_{field}"] = changed.tolist()
        results[f"looked_up_{field}"] = sorted(set(np.asarray(ids).ravel().tolist()) - {0})

    errors = {}
    bad_ids = batch.user_hashes.at[0, 0].set(ROWS)
    for label, tables in (("sharded", sharded_model.tables), ("unsharded", model.tables)):
        try:
            tables(eqx.tree_at(lambda b: b.user_hashes, batch, bad_ids))
            errors[label] = ""
        except ValueError as error:
            errors[label] = str(error)
    results["bad_id_errors"] = errors
    try:
        px.nn.shard_tables(px.HashEmbeddingTables(50, ROWS, ROWS, 8, key=jax.random.key(5)), mesh)
        results["indivisible_error"] = ""
    except ValueError as error:
        results["indivisible_error"] = str(error)
    return results


def _random_batch(config, users: int, candidates: int):
    """Ids in [1, ROWS) built on the host (no compile), the last history item padding."""
    import phoenix_eqx as px

    rng = np.random.default_rng(0)
    hashes, history = config.hash_config, config.history_seq_len

    def ids(*shape, high=ROWS):
        return jnp.asarray(rng.integers(1, high, shape), jnp.int32)

    return px.RecsysBatch(
        user_hashes=ids(users, hashes.num_user_hashes),
        history_post_hashes=ids(users, history, hashes.num_item_hashes).at[:, -1].set(0),
        history_author_hashes=ids(users, history, hashes.num_author_hashes).at[:, -1].set(0),
        history_actions=jnp.asarray(
            rng.random((users, history, config.num_actions)) < 0.3, jnp.float32
        ),
        history_product_surface=ids(users, history, high=config.product_surface_vocab_size),
        candidate_post_hashes=ids(users, candidates, hashes.num_item_hashes),
        candidate_author_hashes=ids(users, candidates, hashes.num_author_hashes),
        candidate_product_surface=ids(users, candidates, high=config.product_surface_vocab_size),
    )


@pytest.fixture(scope="module")
def results() -> dict:
    # Compiling these tiny programs is most of the worker's time.
    return run_on_cpu_devices(
        "tests.distributed.test_sharded_tables", DEVICES, "--xla_backend_optimization_level=0"
    )


def test_sharded_lookups_and_gradients_equal_unsharded(results):
    assert results["devices"] == DEVICES
    assert results["lookup_examples"] >= 2  # the explicit example and generated ones
    assert results["lookup_diff"] == 0.0
    assert results["grad_diff"] < 1e-6
    assert results["grad_spec"] == "P('table',)"  # each device holds its rows' gradient


def test_ids_split_over_a_batch_axis_stay_split(results):
    assert results["lookup_2d_diff"] == 0.0
    assert results["lookup_2d_spec"] == "P('batch',)"


def test_each_device_holds_an_eighth_of_each_table(results):
    assert results["tables_type"] == "ShardedHashEmbeddingTables"
    assert results["shard_rows"] == [ROWS // DEVICES]


def test_model_with_sharded_tables_equals_unsharded(results):
    assert results["loss_diff"] < 1e-6
    assert results["step_param_diff"] < 1e-5
    assert results["step_table_spec"] == "P('table',)"
    assert results["accumulator_spec"] == "P('table',)"


def test_train_step_changes_only_looked_up_rows(results):
    for field in ("user_table", "post_table", "author_table"):
        assert results[f"looked_up_{field}"]
        assert results[f"changed_{field}"] == results[f"looked_up_{field}"]


def test_bad_ids_and_indivisible_tables_are_rejected(results):
    errors = results["bad_id_errors"]
    assert "batch.user_hashes: expected ids in [0, 64)" in errors["unsharded"]
    assert errors["sharded"] == errors["unsharded"]
    assert results["indivisible_error"] == (
        "tables.user_table: expected a leading size divisible by the 8 devices of mesh axis "
        "'table', got 50"
    )


# phoenix_eqx is imported inside the tests: the worker imports it under the type checker.
def test_rowwise_adagrad_matches_its_formula_and_skips_zero_rows():
    from phoenix_eqx.training import rowwise_adagrad

    optimizer = rowwise_adagrad(0.5, eps=1e-3)
    table = jax.random.normal(jax.random.key(0), (5, 3))
    grads = [
        jnp.zeros((5, 3)).at[1].set(jnp.array([1.0, -2.0, 2.0])).at[3].set(0.5),
        jnp.zeros((5, 3)).at[3].set(jnp.array([3.0, 0.0, 0.0])),
    ]
    state, params = optimizer.init(table), table
    expected, accumulator = np.asarray(table), np.zeros(5)
    for grad in grads:
        updates, state = optimizer.update(grad, state, params)
        params = optax.apply_updates(params, updates)
        accumulator = accumulator + np.mean(np.square(np.asarray(grad)), axis=1)
        expected = expected - 0.5 * np.asarray(grad) / (np.sqrt(accumulator)[:, None] + 1e-3)
    np.testing.assert_allclose(params, expected, rtol=1e-6)
    np.testing.assert_allclose(state.accumulators, accumulator, rtol=1e-6)
    # Rows 0, 2 and 4 were never looked up: values and accumulators unchanged bit for bit.
    untouched = np.array([0, 2, 4])
    np.testing.assert_array_equal(np.asarray(params)[untouched], np.asarray(table)[untouched])
    np.testing.assert_array_equal(np.asarray(state.accumulators)[untouched], 0.0)


def test_rowwise_adagrad_rejects_bad_arguments():
    from phoenix_eqx.training import rowwise_adagrad
    from tests.helpers import library_checks_only

    with pytest.raises(ValueError, match="eps: expected > 0, got 0.0"):
        rowwise_adagrad(0.1, eps=0.0)
    with pytest.raises(ValueError, match="learning_rate: expected > 0, got -1.0"):
        rowwise_adagrad(-1.0)
    with library_checks_only(), pytest.raises(ValueError, match=r"got a leaf of shape \(4,\)"):
        rowwise_adagrad(0.1).init({"bias": jnp.zeros(4)})


if __name__ == "__main__":
    print(json.dumps(_worker()))
