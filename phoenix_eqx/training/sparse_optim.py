"""Row-wise Adagrad for huge, sparsely read embedding tables, beside optax's optimisers.

A batch looks up a few rows of each hash table; every other row's gradient is exactly zero.
Adam would still move those rows (its momentum remembers earlier steps) and keeps two
table-sized moments. Row-wise Adagrad, the table optimiser of Phoenix in production, keeps one
accumulator per row and no momentum:

    accumulator[r] += mean(gradient[r] ** 2)
    table[r] -= learning_rate * gradient[r] / (sqrt(accumulator[r]) + eps)

so a row whose gradient is zero (not looked up in the batch) keeps its values and its
accumulator bit for bit: only the rows looked up change. The gradient itself is still a dense
table-shaped array (JAX has no sparse gradients); with `ShardedHashEmbeddingTables` it, the
table and the accumulators are all split by rows over the devices, since every operation here
is row by row.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float, PyTree

from ..embedding import HashEmbeddingTables


class RowwiseAdagradState(NamedTuple):
    """One float32 accumulator per row of every table, in the tables' tree structure."""

    accumulators: PyTree[Float[Array, " _rows"]]


def rowwise_adagrad(learning_rate: float, eps: float = 1e-8) -> optax.GradientTransformation:
    """Row-wise Adagrad on a tree of 2-D `(rows, emb)` tables (see the module docstring).

    `eps > 0` keeps rows never looked up (accumulator 0, gradient 0) at a zero update rather
    than 0 / 0.
    """
    if not learning_rate > 0:
        raise ValueError(f"learning_rate: expected > 0, got {learning_rate}")
    if not eps > 0:
        raise ValueError(f"eps: expected > 0, got {eps}")

    def init(params: PyTree[Float[Array, "_rows _emb"]]) -> RowwiseAdagradState:
        for leaf in jax.tree.leaves(params):
            if jnp.ndim(leaf) != 2:
                raise ValueError(
                    f"params: expected 2-D (rows, emb) tables, got a leaf of shape "
                    f"{jnp.shape(leaf)}"
                )
        # Sliced from the table, so a row-split table gets row-split accumulators.
        return RowwiseAdagradState(
            jax.tree.map(lambda table: jnp.zeros_like(table[:, 0], jnp.float32), params)
        )

    def update(
        grads: PyTree[Float[Array, "_rows _emb"]],
        state: RowwiseAdagradState,
        params: PyTree[Float[Array, "_rows _emb"]] | None = None,
    ) -> tuple[PyTree[Float[Array, "_rows _emb"]], RowwiseAdagradState]:
        del params
        accumulators = jax.tree.map(
            lambda grad, accumulator: (
                accumulator + jnp.mean(jnp.square(grad.astype(jnp.float32)), axis=1)
            ),
            grads,
            state.accumulators,
        )
        updates = jax.tree.map(
            lambda grad, accumulator: (
                -learning_rate * grad.astype(jnp.float32) / (jnp.sqrt(accumulator)[:, None] + eps)
            ).astype(grad.dtype),
            grads,
            accumulators,
        )
        return updates, RowwiseAdagradState(accumulators)

    return optax.GradientTransformation(init, update)


def _table_labels(params: PyTree) -> PyTree[str]:
    """ "tables" for the leaves of every `HashEmbeddingTables` in `params`, "rest" elsewhere."""

    def is_tables(node) -> bool:
        return isinstance(node, HashEmbeddingTables)

    return jax.tree.map(
        lambda node: jax.tree.map(lambda _: "tables" if is_tables(node) else "rest", node),
        params,
        is_leaf=is_tables,
    )


def rowwise_adagrad_for_tables(
    rest: optax.GradientTransformation, learning_rate: float, eps: float = 1e-8
) -> optax.GradientTransformation:
    """`rowwise_adagrad(learning_rate, eps)` on the tables of every `HashEmbeddingTables` of a
    model (sharded or not), `rest` (e.g. `optax.adam(1e-3)`) on its other trainable leaves.

    A drop-in optimiser for `make_train_step` / `init_optimizer`:
    `rowwise_adagrad_for_tables(optax.adam(1e-3), 0.05)`.
    """
    return optax.multi_transform(
        {"tables": rowwise_adagrad(learning_rate, eps), "rest": rest}, _table_labels
    )
