"""Train steps that update only the embedding-table rows a batch looks up.

A sampled-softmax step over a million items looks up a few hundred rows of each table, yet a
plain step's gradient is table-sized, and clipping and Adam then read and write every row of
the table and of both its moments: 123 ms per step at 1M rows x 16 on a 2-core CPU, against
3 ms at 10k rows (docs/scaling-costs.md). `make_row_update_step` instead

1. gathers the rows the step looks up (`rows_of(example)`, made unique) from every
   `HashEmbeddingTables` of the model and of the optimiser state (`TableRows`);
2. takes the gradient, and runs the optimiser, on that small model;
3. writes those rows back, in place (the model and optimiser state are donated).

For the rows looked up, the step is the dense step: global-norm clipping sees the same norm
(every other row's gradient is zero) and Adam the same moments. Rows not looked up keep their
values and their moments ("lazy" Adam), where dense Adam would go on moving them by their
momentum, decay their moments, and AdamW shrink them.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float, Int, PyTree

from ..embedding import HashEmbeddingTables, TableKind
from ..inputs import ids_in_range
from .steps import Example, Objective, TrainStep, trainable


class LookedUp(NamedTuple):
    """Every id a step looks up in each table (any shapes; repeats and 0, padding, allowed)."""

    user: Int[Array, "..."]
    post: Int[Array, "..."]
    author: Int[Array, "..."]


RowsOf = Callable[[Example], LookedUp]


class StepRows(NamedTuple):
    """A step's rows of each table: sorted unique ids, padded with the table's size (a row
    that does not exist: gathers give zeros, writes are dropped), so shapes are static."""

    user: Int[Array, " user_rows"] | None
    post: Int[Array, " post_rows"] | None
    author: Int[Array, " author_rows"] | None


def step_rows(looked_up: LookedUp, tables: HashEmbeddingTables) -> StepRows:
    """The unique rows of `looked_up`, one array per table, as many entries as ids."""

    def unique(ids, kind: TableKind):
        flat = jnp.ravel(ids)
        return jnp.unique(flat, size=flat.size, fill_value=_num_rows(tables, kind))

    return StepRows(*(unique(getattr(looked_up, kind), kind) for kind in StepRows._fields))


def _num_rows(tables: HashEmbeddingTables, kind: TableKind) -> int:
    return getattr(tables, f"{kind}_table").shape[0]


class TableRows(HashEmbeddingTables):
    """Some rows of each of a `HashEmbeddingTables`' tables, looked up by their ids: the
    tables of a row-update step. Ids are checked against the full tables' sizes; an id in
    range but not among `rows` is an error (the step's `rows_of` missed it), never another
    row's embedding."""

    rows: StepRows
    full_rows: tuple[int, int, int] = eqx.field(static=True)

    def __init__(self, tables: HashEmbeddingTables, rows: StepRows):
        self.full_rows = tuple(_num_rows(tables, kind) for kind in StepRows._fields)
        self.rows = rows
        self.user_table, self.post_table, self.author_table = (
            getattr(tables, f"{kind}_table").at[getattr(rows, kind)].get(mode="fill", fill_value=0)
            for kind in StepRows._fields
        )

    def lookup(
        self, kind: TableKind, ids: Int[Array, "*shape"], name: str
    ) -> Float[Array, "*shape emb"]:
        rows = getattr(self.rows, kind)
        ids = ids_in_range(ids, self.full_rows[StepRows._fields.index(kind)], name)
        position = jnp.minimum(jnp.searchsorted(rows, ids), rows.size - 1)
        missing = (rows[position] != ids) & (ids != 0)
        position = eqx.error_if(
            position,
            jnp.any(missing),
            f"{name}: an id not among the rows of this step (its rows_of must name every id "
            f"the objective looks up)",
        )
        # Padding (id 0) gives zeros, as `lookup_rows` does.
        return jnp.where(
            (ids != 0)[..., None], jnp.take(getattr(self, f"{kind}_table"), position, axis=0), 0.0
        )

    def write_into(self, tables: HashEmbeddingTables, rows: StepRows) -> HashEmbeddingTables:
        """`tables` with `rows` set to these rows' values (padding entries dropped)."""
        return eqx.tree_at(
            lambda t: (t.user_table, t.post_table, t.author_table),
            tables,
            tuple(
                getattr(tables, f"{kind}_table")
                .at[getattr(rows, kind)]
                .set(getattr(self, f"{kind}_table"), mode="drop", indices_are_sorted=True)
                for kind in StepRows._fields
            ),
        )


def _is_tables(node: Any) -> bool:
    return isinstance(node, HashEmbeddingTables)


def _restricted(tree: PyTree, rows: StepRows, keep_ids: bool) -> PyTree:
    """`tree` with every `HashEmbeddingTables` in it cut to `rows` (`TableRows`). Without
    `keep_ids` the ids are left out (None), as in a gradient: the optimiser state's copies."""

    def restrict(node):
        if not _is_tables(node):
            return node
        cut = TableRows(node, rows)
        return (
            cut
            if keep_ids
            else eqx.tree_at(
                lambda t: t.rows, cut, StepRows(None, None, None), is_leaf=lambda x: x is None
            )
        )

    return jax.tree.map(restrict, tree, is_leaf=_is_tables)


def _written_back(tree: PyTree, cut: PyTree, rows: StepRows) -> PyTree:
    """`tree` updated from `cut` (`_restricted(tree)` after a step): the rows written into
    every table, every other leaf taken from `cut`."""
    return jax.tree.map(
        lambda full, new: new.write_into(full, rows) if _is_tables(full) else new,
        tree,
        cut,
        is_leaf=lambda node: _is_tables(node) or node is None,
    )


def make_row_update_step(
    objective: Objective, optimizer: optax.GradientTransformation, rows_of: RowsOf
) -> TrainStep:
    """A jitted `step(model, opt_state, example) -> (model, opt_state, aux)` like
    `make_train_step`'s, updating only the table rows `rows_of(example)` names (see the module
    docstring). The model must hold exactly one `HashEmbeddingTables`. The model and
    optimiser state passed in are donated: their arrays are consumed by the step (copy any
    you keep)."""

    @eqx.filter_jit(donate="all-except-first")
    def row_update_step(example: Any, model: Any, opt_state: optax.OptState):
        tables = [node for node in jax.tree.leaves(model, is_leaf=_is_tables) if _is_tables(node)]
        if len(tables) != 1:
            raise ValueError(
                f"model: expected exactly one HashEmbeddingTables in it, got {len(tables)}"
            )
        rows = step_rows(rows_of(example), tables[0])
        cut_model = _restricted(model, rows, keep_ids=True)
        (_, aux), grads = eqx.filter_value_and_grad(objective, has_aux=True)(cut_model, example)
        cut_state = _restricted(opt_state, rows, keep_ids=False)
        updates, cut_state = optimizer.update(grads, cut_state, trainable(cut_model))
        cut_model = eqx.apply_updates(cut_model, updates)
        return (
            _written_back(model, cut_model, rows),
            _written_back(opt_state, cut_state, rows),
            {**aux, "grad_norm": optax.tree.norm(grads)},
        )

    def train_step(model: Any, opt_state: optax.OptState, example: Any):
        return row_update_step(example, model, opt_state)

    return train_step
