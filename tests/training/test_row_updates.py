"""Row-update steps (`training.make_row_update_step`): on the rows a batch looks up and on
every other leaf a step is the plain step; every other row and its optimiser moments stay bit
for bit; an id the step did not name is an error."""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given
from hypothesis import strategies as st

from phoenix_eqx.training import (
    LookedUp,
    SequenceExample,
    TrainableRetriever,
    all_positions_objective,
    all_positions_rows,
    init_optimizer,
    make_row_update_step,
    make_train_step,
)
from phoenix_eqx.training.loop import Schedule

from ..helpers import example_inputs, tiny_retrieval_config

ROWS = 60


def _model() -> TrainableRetriever:
    return TrainableRetriever(
        tiny_retrieval_config(history=6), ROWS, ROWS, ROWS, key=jax.random.key(0)
    )


def _example(seed: int) -> SequenceExample:
    """Random left-aligned sequences, their next items as targets in a corpus of 12 rows, the
    sampled loss's inputs."""
    rng = np.random.default_rng(seed)
    batch, _ = example_inputs(
        tiny_retrieval_config(history=6), batch_size=3, candidates=1, seed=seed
    )
    lengths = rng.integers(0, 7, size=3)
    valid = np.arange(6)[None, :] < lengths[:, None]
    batch = eqx.tree_at(
        lambda b: (b.history_post_hashes, b.history_author_hashes),
        batch,
        (
            jnp.where(valid[..., None], batch.history_post_hashes % ROWS, 0),
            jnp.where(valid[..., None], batch.history_author_hashes % ROWS, 0),
        ),
    )
    targets = np.where(np.arange(7)[None, :] <= lengths[:, None], rng.integers(1, 12, (3, 7)), 0)
    corpus = rng.integers(1, ROWS, size=(12, batch.history_post_hashes.shape[-1]))
    corpus[0] = 0
    return SequenceExample(
        batch=batch,
        targets=jnp.asarray(targets),
        target_log_q=jnp.asarray(rng.normal(size=targets.shape), jnp.float32),
        corpus_post_hashes=jnp.asarray(corpus),
        corpus_author_hashes=jnp.asarray(corpus[:, :2]),
    )


def _objective(model, example):
    return all_positions_objective(model, example, "sampled")


def _copy(tree):
    return jax.tree.map(
        lambda leaf: jnp.array(leaf, copy=True) if eqx.is_array(leaf) else leaf, tree
    )


def _tables(tree) -> list:
    return [
        node
        for node in jax.tree.leaves(tree, is_leaf=lambda n: hasattr(n, "post_table"))
        if hasattr(node, "post_table")
    ]


@functools.cache
def _steps(learning_rate: float):
    """The plain and the row-update step of one optimiser (built once: each compiles)."""
    optimizer = Schedule(learning_rate, decay_share=0.0).optimizer()
    return (
        optimizer,
        make_train_step(_objective, optimizer),
        make_row_update_step(_objective, optimizer, all_positions_rows),
    )


@given(seed=st.integers(0, 2**16))
def test_a_row_step_is_the_plain_step_on_its_rows_and_leaves_every_other_row(seed):
    # Two plain steps first give the moments values (dense Adam then moves every row).
    optimizer, plain, rows_step = _steps(0.05)
    model = _model()
    state = init_optimizer(optimizer, model)
    for warm_up in (seed + 1, seed + 2):
        model, state, _ = plain(model, state, _example(warm_up))
    example = _example(seed)
    plain_model, plain_state, plain_aux = plain(model, state, example)
    row_model, row_state, row_aux = rows_step(_copy(model), _copy(state), example)
    np.testing.assert_allclose(row_aux["loss"], plain_aux["loss"], rtol=1e-6)
    np.testing.assert_allclose(row_aux["grad_norm"], plain_aux["grad_norm"], rtol=1e-5)

    looked_up = all_positions_rows(example)
    for kind in ("user", "post", "author"):
        touched = np.zeros(ROWS, bool)
        touched[np.asarray(getattr(looked_up, kind)).ravel()] = True
        table = f"{kind}_table"
        for before, after_plain, after_rows in zip(
            _tables((model, state)),
            _tables((plain_model, plain_state)),
            _tables((row_model, row_state)),
            strict=True,
        ):
            before, after_plain, after_rows = (
                np.asarray(getattr(t, table)) for t in (before, after_plain, after_rows)
            )
            np.testing.assert_allclose(
                after_rows[touched], after_plain[touched], rtol=1e-5, atol=1e-7
            )
            np.testing.assert_array_equal(after_rows[~touched], before[~touched])
    # Every leaf outside the tables (transformer, temperature, step counts) as the plain step.
    outside = lambda tree: eqx.tree_at(  # noqa: E731
        lambda t: _tables(t), tree, replace_fn=lambda _: None
    )
    for got, want in zip(
        jax.tree.leaves(outside((row_model, row_state))),
        jax.tree.leaves(outside((plain_model, plain_state))),
        strict=True,
    ):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_an_id_the_step_did_not_name_is_an_error():
    optimizer = optax.adam(1e-3)

    def users_only(example):
        return LookedUp(
            user=example.batch.user_hashes,
            post=jnp.zeros(1, jnp.int32),
            author=jnp.zeros(1, jnp.int32),
        )

    step = make_row_update_step(_objective, optimizer, users_only)
    model = _model()
    with pytest.raises(Exception, match="an id not among the rows of this step"):
        step(model, init_optimizer(optimizer, model), _example(0))
