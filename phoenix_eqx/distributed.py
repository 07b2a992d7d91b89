"""Many devices, same code: batches split over a mesh axis, corpora sharded by rows.

- Inference (`sharded_rank`, `sharded_encode_users`) runs the single-device model on each
  device's share of the users under `jax.shard_map`, so the attention and top-k kernels see
  plain per-device arrays (GSPMD cannot split a Pallas call; it would gather its inputs).
- Retrieval over a corpus too large for one device (`shard_corpus`, `sharded_retrieve`) scores
  every user against each device's rows and merges the per-shard top-k
  (`kernels.sharded_corpus_top_k`).
- Data-parallel training (`data_parallel`) runs an unchanged train step on a batch split over
  the mesh with the model and optimiser state replicated; XLA inserts the gradient all-reduce.
  The loss is the global batch's loss, so one step equals the single-device step.
- Several processes (`jax.distributed.initialize`, each process owning its local devices) run
  the same code on `global_mesh`, a mesh of every process's devices: each process keeps the rows
  `process_local_slice` gives it of a global batch (or corpus) and `make_global_batch` assembles
  the global arrays from those rows without moving them between processes; `local_replica`
  gives each process its own copy of a replicated model to evaluate or serve alone.
"""

from collections.abc import Callable
from typing import Any, SupportsIndex

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec
from jaxtyping import Array, Float, PyTree

from .inputs import RankingOutput, RecsysBatch, RecsysEmbeddings, RetrievalOutput
from .kernels import sharded_corpus_top_k
from .kernels.dispatch import Implementation, static_int
from .ranker import PhoenixModel
from .retrieval import Corpus, PhoenixRetrievalModel
from .serving import rank_chunked


def make_mesh(axis_name: str = "batch", num_devices: int | None = None) -> Mesh:
    """A one-axis mesh over the first `num_devices` devices (all of them by default)."""
    available = len(jax.devices())
    count = available if num_devices is None else num_devices
    if not 1 <= count <= available:
        raise ValueError(f"num_devices: expected 1..{available} (the devices), got {num_devices}")
    # Auto axes: jit places unannotated intermediates itself (GSPMD), as data parallelism needs.
    return jax.make_mesh((count,), (axis_name,), (AxisType.Auto,), devices=jax.devices()[:count])


def global_mesh(axis_name: str = "batch") -> Mesh:
    """A one-axis mesh over every device of every process, ordered by process.

    Under `jax.distributed.initialize` each process addresses only its own devices; ordering the
    mesh by process gives each process one contiguous block of any array split over the axis,
    the block `process_local_slice` names. In a single process this is `make_mesh(axis_name)`.
    """
    devices = sorted(jax.devices(), key=lambda device: (device.process_index, device.id))
    return Mesh(np.array(devices), (axis_name,), axis_types=(AxisType.Auto,))


def _local_block(size: int, mesh: Mesh, axis_name: str, name: str) -> tuple[int, int]:
    """Start and stop of the rows this process's devices hold of a `size`-row array (argument
    `name`) split over `axis_name` (the mesh's other axes replicate it)."""
    _check_divisible(size, mesh, axis_name, name)
    sharding = NamedSharding(mesh, PartitionSpec(axis_name))
    blocks = sorted(
        {
            index[0].indices(size)[:2]
            for index in sharding.addressable_devices_indices_map((size,)).values()
        }
    )
    for (_, stop), (start, _) in zip(blocks[:-1], blocks[1:], strict=True):
        if stop != start:
            raise ValueError(
                f"mesh: expected this process's devices adjacent along axis {axis_name!r} (as "
                f"global_mesh orders them), got rows {blocks}"
            )
    return blocks[0][0], blocks[-1][1]


def process_local_slice(global_batch_size: int, mesh: Mesh, axis_name: str = "batch") -> slice:
    """The rows of a `global_batch_size`-row batch that this process feeds, under `mesh`.

    A pure function of the mesh and the process index: slicing the batch a stream gives for
    `(seed, step)` with it hands every process the same share at every step, so a resumed run
    replays the same global batches. It is all rows when one process owns the whole axis.
    """
    start, stop = _local_block(global_batch_size, mesh, axis_name, "global_batch_size")
    return slice(start, stop)


def make_global_batch(local_tree: PyTree, mesh: Mesh, axis_name: str = "batch") -> PyTree:
    """Global arrays split over `axis_name` from each process's rows of them.

    Every process calls this with its `process_local_slice` of the batch (or corpus); each array
    leaf becomes a global array whose leading axis is the concatenation, in process order, of
    the processes' rows, placed where `shard_batch` would place the whole. Non-array leaves are
    kept.
    """
    axis_size = _axis_size(mesh, axis_name)
    start, stop = _local_block(axis_size, mesh, axis_name, "mesh")
    local_shards = stop - start
    sharding = NamedSharding(mesh, PartitionSpec(axis_name))

    def assemble(leaf):
        if not eqx.is_array(leaf):
            return leaf
        if not leaf.shape or leaf.shape[0] % local_shards:
            raise ValueError(
                f"local_tree: expected arrays whose leading size divides by this process's "
                f"{local_shards} devices on axis {axis_name!r}, got shape {leaf.shape}"
            )
        global_shape = (leaf.shape[0] // local_shards * axis_size, *leaf.shape[1:])
        return jax.make_array_from_process_local_data(sharding, leaf, global_shape)

    return jax.tree.map(assemble, local_tree)


def _axis_size(mesh: Mesh, axis_name: str) -> int:
    if axis_name not in mesh.shape:
        raise ValueError(
            f"axis_name: expected one of the mesh axes {tuple(mesh.shape)}, got {axis_name!r}"
        )
    return mesh.shape[axis_name]


def _check_divisible(size: int, mesh: Mesh, axis_name: str, name: str) -> None:
    devices = _axis_size(mesh, axis_name)
    if size % devices:
        raise ValueError(
            f"{name}: expected a leading size divisible by the {devices} devices of mesh axis "
            f"{axis_name!r}, got {size}"
        )


def shard_batch(tree: PyTree, mesh: Mesh, axis_name: str = "batch") -> PyTree:
    """Place every array of `tree` with its leading (batch) axis split over `axis_name`."""
    for leaf in jax.tree.leaves(tree):
        if eqx.is_array(leaf):
            shape = leaf.shape
            if not shape:
                raise ValueError("tree: expected arrays with a batch axis, got a scalar leaf")
            _check_divisible(shape[0], mesh, axis_name, "tree")
    sharding = NamedSharding(mesh, PartitionSpec(axis_name))
    return jax.tree.map(lambda x: jax.device_put(x, sharding) if eqx.is_array(x) else x, tree)


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
    """Place a full copy of every array of `tree` on every device of the mesh."""
    sharding = NamedSharding(mesh, PartitionSpec())
    return jax.tree.map(lambda x: jax.device_put(x, sharding) if eqx.is_array(x) else x, tree)


def local_replica(tree: PyTree) -> PyTree:
    """This process's own copy of a replicated tree (such as a model `data_parallel` trained),
    for work each process does alone (evaluation, serving) without collectives.

    The arrays are copied, bit for bit, through host memory onto the default device,
    uncommitted like freshly made ones: jitted functions called with them reuse the
    compilations of single-device arrays and may mix them with arrays on that device.
    """

    def local(leaf):
        if not isinstance(leaf, jax.Array):
            return leaf
        if not leaf.is_fully_replicated:
            raise ValueError(f"tree: expected replicated arrays, got one placed as {leaf.sharding}")
        return jnp.asarray(np.asarray(leaf))

    return jax.tree.map(local, tree)


def _per_device(function: Callable, mesh: Mesh, axis_name: str, num_replicated: int) -> Callable:
    """`function(*replicated, *batched)` run on each device's share of the batched arguments."""

    def run(*args):
        replicated_specs = (PartitionSpec(),) * num_replicated
        batched_specs = (PartitionSpec(axis_name),) * (len(args) - num_replicated)
        if AxisType.Explicit in mesh.axis_types:
            # Explicit axes carry shardings in the types: lay the arguments out as the specs
            # say, wherever the caller placed them (on Auto axes shard_map does it itself).
            args = tuple(
                jax.tree.map(lambda x, spec=spec: jax.reshard(x, NamedSharding(mesh, spec)), arg)
                for arg, spec in zip(args, replicated_specs + batched_specs, strict=True)
            )
        # check_vma=False: the Pallas kernels inside carry no varying-axis annotations.
        mapped = jax.shard_map(
            function,
            mesh=mesh,
            in_specs=replicated_specs + batched_specs,
            out_specs=PartitionSpec(axis_name),
            check_vma=False,
        )
        return mapped(*args)

    return run


def sharded_rank(
    model: PhoenixModel,
    batch: RecsysBatch,
    embeddings: RecsysEmbeddings,
    *,
    mesh: Mesh,
    axis_name: str = "batch",
    candidate_chunk: SupportsIndex | None = None,
) -> RankingOutput:
    """`inference.rank` with the users split over mesh axis `axis_name`.

    Each device ranks its users with the whole model; with `candidate_chunk` it uses the
    prefix-cached `serving.rank_chunked`. The batch size must divide by the axis size.
    """
    _check_divisible(batch.user_hashes.shape[0], mesh, axis_name, "batch.user_hashes")
    if candidate_chunk is not None:
        candidate_chunk = static_int(candidate_chunk, "candidate_chunk", minimum=1)
    return _sharded_rank(model, batch, embeddings, mesh, axis_name, candidate_chunk)


@eqx.filter_jit
def _sharded_rank(model, batch, embeddings, mesh, axis_name, candidate_chunk):
    def local(model, batch, embeddings):
        if candidate_chunk is None:
            return model.rank(batch, embeddings)
        return rank_chunked(model, batch, embeddings, candidate_chunk=candidate_chunk)

    return _per_device(local, mesh, axis_name, 1)(model, batch, embeddings)


@eqx.filter_jit
def sharded_encode_users(
    model: PhoenixRetrievalModel,
    batch: RecsysBatch,
    embeddings: RecsysEmbeddings,
    *,
    mesh: Mesh,
    axis_name: str = "batch",
) -> tuple[Float[Array, "batch emb"], Float[Array, "batch 1"]]:
    """`inference.encode_users` with the users split over mesh axis `axis_name`."""
    _check_divisible(batch.user_hashes.shape[0], mesh, axis_name, "batch.user_hashes")
    return _per_device(PhoenixRetrievalModel.encode_users, mesh, axis_name, 1)(
        model, batch, embeddings
    )


def shard_corpus(corpus: Corpus, mesh: Mesh, axis_name: str = "corpus") -> Corpus:
    """Split a corpus's rows (vectors, post ids, mask) over mesh axis `axis_name`."""
    _check_divisible(corpus.embeddings.shape[0], mesh, axis_name, "corpus.embeddings")
    return shard_batch(corpus, mesh, axis_name)


def sharded_retrieve(
    model: PhoenixRetrievalModel,
    batch: RecsysBatch,
    embeddings: RecsysEmbeddings,
    corpus: Corpus,
    k: SupportsIndex = 100,
    *,
    mesh: Mesh,
    axis_name: str = "corpus",
    implementation: Implementation = "auto",
) -> RetrievalOutput:
    """`inference.retrieve` against a corpus whose rows are split over mesh axis `axis_name`.

    Users are encoded once, then each device selects its rows' top-k and the per-shard
    results are merged into the exact global top-k (indices into the whole corpus). The model
    and users not yet on the mesh are replicated onto it, so a corpus assembled across processes
    (`make_global_batch`) needs nothing more from the caller.
    """
    _check_divisible(corpus.embeddings.shape[0], mesh, axis_name, "corpus.embeddings")
    k = static_int(k, "k", minimum=1, maximum=corpus.embeddings.shape[0])
    model, batch, embeddings = jax.tree.map(
        lambda x: x if _is_placed(x, mesh) else replicate(x, mesh), (model, batch, embeddings)
    )
    return _sharded_retrieve(model, batch, embeddings, corpus, k, mesh, axis_name, implementation)


@eqx.filter_jit
def _sharded_retrieve(model, batch, embeddings, corpus, k, mesh, axis_name, implementation):
    users, _ = model.encode_users(batch, embeddings)
    best = sharded_corpus_top_k(
        users,
        corpus.embeddings,
        k,
        mesh=mesh,
        axis_name=axis_name,
        corpus_mask=corpus.mask,
        implementation=implementation,
    )
    return RetrievalOutput(
        user_representation=users, top_k_indices=best.indices, top_k_scores=best.scores
    )


def data_parallel(
    train_step: Callable[[Any, Any, Any], Any], *, mesh: Mesh, axis_name: str = "batch"
) -> Callable[[Any, Any, Any], Any]:
    """Wrap `train_step(model, opt_state, example)` to run data-parallel over `axis_name`.

    The example's arrays are split on their leading axis (every leaf must have the batch
    first; replicate shared leaves such as sampled negatives with `replicate` beforehand, they
    keep their placement); the model and optimiser state are replicated.
    """

    def step(model, opt_state, example):
        example = jax.tree.map(
            lambda x: x if _is_placed(x, mesh) else shard_batch(x, mesh, axis_name), example
        )
        return train_step(replicate(model, mesh), replicate(opt_state, mesh), example)

    return step


def _is_placed(x: Any, mesh: Mesh) -> bool:
    """Already laid out on this mesh (left as the caller placed it: a replicated scalar such as
    a step's PRNG key too)."""
    sharding = getattr(x, "sharding", None)
    return isinstance(sharding, NamedSharding) and sharding.mesh == mesh
