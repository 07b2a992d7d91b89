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
"""

from collections.abc import Callable
from typing import Any, SupportsIndex

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec
from jaxtyping import Array, Float, PyTree

from .inputs import RankingOutput, RecsysBatch, RecsysEmbeddings, RetrievalOutput
from .kernels import sharded_corpus_top_k
from .kernels._dispatch import Implementation, static_int
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
    results are merged into the exact global top-k (indices into the whole corpus).
    """
    _check_divisible(corpus.embeddings.shape[0], mesh, axis_name, "corpus.embeddings")
    k = static_int(k, "k", minimum=1, maximum=corpus.embeddings.shape[0])
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
    """Already laid out on this mesh (left as the caller placed it)."""
    sharding = getattr(x, "sharding", None)
    return isinstance(sharding, NamedSharding) and sharding.mesh == mesh and jnp.ndim(x) > 0
