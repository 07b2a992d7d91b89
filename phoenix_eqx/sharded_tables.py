"""Hash embedding tables split by rows over a mesh axis: tables larger than one device.

`shard_tables` replaces every `HashEmbeddingTables` of a model (or the tables themselves) by a
`ShardedHashEmbeddingTables`, whose tables have their rows split over mesh axis `axis_name`:
each of its `n` devices holds `rows / n` rows of each table. Lookups (`sharded_lookup_rows`) run
under `jax.shard_map`: each device looks up the ids that fall in its block of rows (zeros for
the others) and a `psum` over the axis adds the partial lookups, so every device gets every row
it asked for while the table stays where it is. Backward is split the same way: the psum's
transpose hands each device the output's gradient and its local lookup's transpose adds it into
its own rows only, so the table's gradient is split like the table, and so is the state of an
optimiser acting row by row on it (`training.rowwise_adagrad`).

Only `axis_name` is manual inside the lookup; the mesh's other axes stay automatic, so ids split
over a `batch` axis of the same mesh stay split (each device looks up its users' ids in its
rows). Ids split over `axis_name` itself are gathered first.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxtyping import Array, Float, Int, PyTree

from .distributed import _check_divisible
from .embedding import HashEmbeddingTables, TableKind
from .inputs import ids_in_range


def sharded_lookup_rows(
    table: Float[Array, "rows emb"],
    ids: Int[Array, "*shape"],
    *,
    mesh: Mesh,
    axis_name: str,
    name: str,
) -> Float[Array, "*shape emb"]:
    """`embedding.lookup_rows` of a table whose rows are split over mesh axis `axis_name`: the
    same rows (id 0 gives zeros) and the same check of `ids` (`name` is the argument named in
    the error), without gathering the table on any device."""
    _check_divisible(table.shape[0], mesh, axis_name, "table")
    if ids.size:
        # Checked through their extremes and tied back by a clip that changes nothing: an
        # in-graph check of `ids` themselves would replicate ids split over a batch axis.
        low, high = ids_in_range(jnp.stack([jnp.min(ids), jnp.max(ids)]), table.shape[0], name)
        ids = jnp.clip(ids, low, high)
    rows_per_device = table.shape[0] // mesh.shape[axis_name]

    def partial_lookup(block, ids):
        local_ids = ids - jax.lax.axis_index(axis_name) * rows_per_device
        here = (local_ids >= 0) & (local_ids < rows_per_device) & (ids != 0)
        # Clipped so that ids of other blocks index a real row; `here` zeroes their values and,
        # in the transpose, their gradients.
        rows = jnp.take(block, jnp.clip(local_ids, 0, rows_per_device - 1), axis=0)
        return jax.lax.psum(jnp.where(here[..., None], rows, 0.0), axis_name)

    lookup = jax.shard_map(
        partial_lookup,
        mesh=mesh,
        in_specs=(PartitionSpec(axis_name), PartitionSpec()),
        out_specs=PartitionSpec(),
        axis_names=frozenset({axis_name}),
    )
    return lookup(table, ids)


class ShardedHashEmbeddingTables(HashEmbeddingTables):
    """`HashEmbeddingTables` with each table's rows split over mesh axis `axis_name`.

    Looks up like the tables it was made from (same embeddings, same gradients, same errors for
    bad ids) with each device holding `1/n` of every table; the rows of each table must divide
    by the axis size `n` (size hash tables in multiples of it; no padding rows are added, so
    the tables keep the shapes, and the ids their range, of the unsharded ones).
    """

    mesh: Mesh = eqx.field(static=True)
    axis_name: str = eqx.field(static=True)

    def __init__(self, tables: HashEmbeddingTables, mesh: Mesh, axis_name: str = "table"):
        for field in ("user_table", "post_table", "author_table"):
            _check_divisible(getattr(tables, field).shape[0], mesh, axis_name, f"tables.{field}")
        rows_split = NamedSharding(mesh, PartitionSpec(axis_name))
        self.user_table = jax.device_put(tables.user_table, rows_split)
        self.post_table = jax.device_put(tables.post_table, rows_split)
        self.author_table = jax.device_put(tables.author_table, rows_split)
        self.mesh = mesh
        self.axis_name = axis_name

    def lookup(
        self, kind: TableKind, ids: Int[Array, "*shape"], name: str
    ) -> Float[Array, "*shape emb"]:
        return sharded_lookup_rows(
            getattr(self, f"{kind}_table"), ids, mesh=self.mesh, axis_name=self.axis_name, name=name
        )


def shard_tables(tree: PyTree, mesh: Mesh, axis_name: str = "table") -> PyTree:
    """`tree` (a model such as `TrainableRanker`, or tables) with every `HashEmbeddingTables`
    in it row-split over mesh axis `axis_name` (as `ShardedHashEmbeddingTables`); the other
    leaves are left where they are."""

    def is_tables(node) -> bool:
        return isinstance(node, HashEmbeddingTables)

    if not any(is_tables(node) for node in jax.tree.leaves(tree, is_leaf=is_tables)):
        raise ValueError(f"tree: expected HashEmbeddingTables in it, got {type(tree).__name__}")
    return jax.tree.map(
        lambda node: ShardedHashEmbeddingTables(node, mesh, axis_name) if is_tables(node) else node,
        tree,
        is_leaf=is_tables,
    )
