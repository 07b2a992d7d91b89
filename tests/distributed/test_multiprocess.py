"""Two processes under `jax.distributed` against one process with as many devices.

Each of two local CPU processes (gloo collectives, a coordinator on a free localhost port) owns
two emulated devices; a third process owns four. All three train the same tiny ranker for a
few data-parallel steps on the same stream, each feeding its `process_local_slice` of every
global batch, save the model and optimiser state with `CheckpointManager` (arrays split over
the processes' devices where their rows divide), and retrieve from a corpus split over all
devices. The two-process run must reproduce the one-process losses, parameters and top-k
indices, and the exact single-device retrieval; the checkpoint both processes wrote must
restore on one device bit for bit.

This file run as a module is the worker: `python -m tests.distributed.test_multiprocess --help`.
"""

import argparse
import functools
import hashlib
import json
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 240
DEVICES = 4
PROCESSES = 2
STEPS, BATCH_SIZE, EMB_SIZE = 3, 8, 16


def _ranker_training(emb_size: int, batch_size: int) -> tuple:
    """What every worker trains, and the test restores checkpoints into: the data split, the
    train options, the ranker's initialiser (`TrainableRanker`, its arguments bound) and the
    optimiser. A worker calls it after `jax.distributed.initialize`: its key starts jax's
    backends."""
    import jax
    import jax.numpy as jnp
    import optax

    from phoenix_eqx.config import HashConfig, PhoenixModelConfig, transformer_config
    from phoenix_eqx.data import leave_last_out, synthetic_interactions
    from phoenix_eqx.training import TrainableRanker

    split = leave_last_out(synthetic_interactions(num_users=40, num_items=30, seed=0))
    data = split.data
    # The ranker of the streaming trainer this test was written against: one bidirectional
    # layer over 4 history items, 8 candidates.
    options = argparse.Namespace(num_candidates=8, history_seq_len=4, batch_size=batch_size)
    config = PhoenixModelConfig(
        model=transformer_config(emb_size, 8, 2, 2, 1, history_attention="bidirectional"),
        emb_size=emb_size,
        history_seq_len=options.history_seq_len,
        candidate_seq_len=options.num_candidates,
        fprop_dtype=jnp.float32,
        hash_config=HashConfig(
            num_user_hashes=data.user_hashes.shape[1],
            num_item_hashes=data.post_hashes.shape[1],
            num_author_hashes=data.author_hashes.shape[1],
        ),
        product_surface_vocab_size=data.num_surfaces,
    )
    build_ranker = functools.partial(
        TrainableRanker,
        config,
        data.num_user_rows,
        data.num_post_rows,
        data.num_author_rows,
        key=jax.random.key(0),
    )
    return split, options, build_ranker, optax.adam(1e-2)


def _digest(tree) -> str:
    """SHA-256 of the bytes of every array leaf, in order: equal digests, bit-equal arrays."""
    import equinox as eqx
    import jax

    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(eqx.filter(tree, eqx.is_array)):
        digest.update(np.asarray(leaf).tobytes())
    return digest.hexdigest()


def _worker(args: argparse.Namespace) -> dict:
    import equinox as eqx
    import jax

    if args.num_processes > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=args.coordinator,
            num_processes=args.num_processes,
            process_id=args.process_id,
            initialization_timeout=TIMEOUT_S,
        )
    from jax.sharding import NamedSharding, PartitionSpec

    import phoenix_eqx as px
    from phoenix_eqx import distributed
    from phoenix_eqx.data import RankingStream
    from phoenix_eqx.inference import retrieve, set_corpus
    from phoenix_eqx.training import (
        CheckpointManager,
        init_optimizer,
        make_train_step,
        ranking_objective,
    )
    from tests.helpers import example_inputs, tiny_retrieval_config

    results: dict = {
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "local_devices": jax.local_device_count(),
        "devices": jax.device_count(),
    }
    mesh = distributed.global_mesh("batch")
    split, options, build_ranker, optimizer = _ranker_training(args.emb_size, args.batch_size)
    # Built under jit: one compilation rather than one per initialiser (most of the run's time).
    model = eqx.filter_jit(build_ranker)()
    stream = RankingStream(split, args.batch_size, 4, options.num_candidates, seed=3)
    step = distributed.data_parallel(
        make_train_step(ranking_objective, optimizer), mesh=mesh, axis_name="batch"
    )
    opt_state = init_optimizer(optimizer, model)
    rows = distributed.process_local_slice(args.batch_size, mesh, "batch")
    results["rows"] = [rows.start, rows.stop]
    losses, times = [], []
    for index in range(args.steps):
        start = time.perf_counter()
        local = jax.tree.map(lambda x: np.asarray(x)[rows], stream(index))
        example = distributed.make_global_batch(local, mesh, "batch")
        model, opt_state, aux = step(model, opt_state, example)
        losses.append(float(aux["loss"]))  # waits for the step
        times.append(time.perf_counter() - start)
    results["losses"] = losses
    results["step_s_after_first"] = float(np.median(times[1:])) if len(times) > 1 else None
    # Peak resident memory of this process (Linux reports KiB).
    results["max_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    leaves = jax.tree.leaves(eqx.filter(model, eqx.is_array))
    results["params"] = np.concatenate([np.ravel(np.asarray(x)) for x in leaves]).tolist()
    results["state_digest"] = _digest((model, opt_state))
    if args.checkpoint_dir is not None:

        def split_rows(leaf):
            # Rows split over the mesh where they divide: each process then holds only its
            # half of those arrays, and must write exactly that half.
            if not eqx.is_array(leaf):
                return leaf
            divides = leaf.ndim > 0 and leaf.shape[0] % DEVICES == 0
            spec = PartitionSpec("batch") if divides else PartitionSpec()
            return jax.device_put(leaf, NamedSharding(mesh, spec))

        placed_model, placed_opt_state = jax.tree.map(split_rows, (model, opt_state))
        results["split_arrays"] = sum(
            not leaf.is_fully_replicated
            for leaf in jax.tree.leaves(eqx.filter((placed_model, placed_opt_state), eqx.is_array))
        )
        with CheckpointManager(args.checkpoint_dir) as checkpoints:
            checkpoints.save(
                args.steps, placed_model, placed_opt_state, data_position={"step": args.steps}
            )
        results["checkpoint_dir"] = args.checkpoint_dir

    corpus_mesh = distributed.global_mesh("corpus")
    retrieval = eqx.filter_jit(px.PhoenixRetrievalModel)(
        tiny_retrieval_config(num_layers=1), key=jax.random.key(1)
    )
    batch, embeddings = example_inputs(retrieval.config, batch_size=3, candidates=1)

    @jax.jit
    def corpus_arrays(key):
        vectors, post_ids = px.create_example_corpus(DEVICES * 16, 16, key=key)
        return vectors, post_ids, jax.random.bernoulli(key, 0.8, (vectors.shape[0],))

    corpus = set_corpus(*corpus_arrays(jax.random.key(2)))
    corpus_rows = distributed.process_local_slice(DEVICES * 16, corpus_mesh, "corpus")
    local_corpus = jax.tree.map(lambda x: np.asarray(x)[corpus_rows], corpus)
    sharded = distributed.make_global_batch(local_corpus, corpus_mesh, "corpus")
    results["corpus_addressable_rows"] = sum(
        shard.data.shape[0] for shard in sharded.embeddings.addressable_shards
    )
    k = 40  # more than the 16 rows of one device: the merge picks across shards
    got = distributed.sharded_retrieve(
        retrieval, batch, embeddings, sharded, k, mesh=corpus_mesh, axis_name="corpus"
    )
    results["top_40"] = np.asarray(got.top_k_indices).tolist()
    if args.num_processes == 1:  # the plain single-device path, for the test to compare
        want = retrieve(retrieval, batch, embeddings, corpus, k)
        results["top_40_single_device"] = np.asarray(want.top_k_indices).tolist()
    return results


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Little optimisation: compiling, not running, is what takes the time of these tiny programs.
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def _spawn(devices: int, log: Path, arguments: list[str], xla_flags: str) -> subprocess.Popen:
    """A worker on `devices` emulated CPU devices, its stdout and stderr in `log`.{out,err}
    (files, not pipes: a worker blocked on a full pipe would stall its peers' shutdown)."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices} {xla_flags}"
    )
    env["JAX_PLATFORMS"] = "cpu"
    with open(f"{log}.out", "w") as stdout, open(f"{log}.err", "w") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.distributed.test_multiprocess", *arguments],
            cwd=ROOT,
            env=env,
            stdout=stdout,
            stderr=stderr,
        )


def run_workers(
    log_dir: Path,
    *,
    steps: int = STEPS,
    batch_size: int = BATCH_SIZE,
    emb_size: int = EMB_SIZE,
    xla_flags: str = FAST_COMPILE,
) -> list[dict]:
    """One process on 4 devices, and two processes on 2 devices each, side by side; their
    reports. Each layout saves a checkpoint under `log_dir` (the two processes into one). Any
    worker still running after `TIMEOUT_S` seconds, or when one fails, is killed."""
    common = ["--steps", str(steps), "--batch-size", str(batch_size), "--emb-size", str(emb_size)]
    coordinator = f"127.0.0.1:{_free_port()}"
    launches = [
        ("single", DEVICES, [*common, "--checkpoint-dir", str(log_dir / "checkpoint-single")])
    ] + [
        (
            f"process{index}",
            DEVICES // PROCESSES,
            [*common, "--coordinator", coordinator, "--num-processes", str(PROCESSES)]
            + ["--process-id", str(index), "--checkpoint-dir", str(log_dir / "checkpoint-pair")],
        )
        for index in range(PROCESSES)
    ]
    processes = []
    try:
        for name, devices, arguments in launches:
            processes.append(_spawn(devices, log_dir / name, arguments, xla_flags))
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline and any(p.poll() is None for p in processes):
            if any(p.poll() not in (None, 0) for p in processes):
                break  # one failed: its peers would wait for it until their own timeouts
            time.sleep(0.2)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait()
    reports = []
    for (name, devices, _), process in zip(launches, processes, strict=True):
        stdout = (log_dir / f"{name}.out").read_text()
        stderr = (log_dir / f"{name}.err").read_text()
        assert process.returncode == 0, (
            f"worker {name} on {devices} devices exited {process.returncode} (-9: killed after "
            f"the {TIMEOUT_S} s timeout or a peer's failure):\n{stdout[-2000:]}\n{stderr[-6000:]}"
        )
        reports.append(json.loads(stdout.strip().splitlines()[-1]))
    return reports


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> list[dict]:
    return run_workers(tmp_path_factory.mktemp("workers"))


def test_processes_own_their_devices(reports):
    single, *parts = reports
    assert (single["process_count"], single["devices"]) == (1, DEVICES)
    assert single["rows"] == [0, 8]
    for index, part in enumerate(parts):
        assert part["process_index"] == index
        assert part["process_count"] == PROCESSES
        assert (part["local_devices"], part["devices"]) == (DEVICES // PROCESSES, DEVICES)
        # Each process feeds, and holds, only its half of the batch and of the corpus.
        assert part["rows"] == [4 * index, 4 * index + 4]
        assert part["corpus_addressable_rows"] == DEVICES * 16 // PROCESSES


def test_two_process_training_equals_one_process(reports):
    single, *parts = reports
    for part in parts:
        assert part["losses"] == pytest.approx(single["losses"], abs=1e-5)
        difference = np.abs(np.asarray(part["params"]) - np.asarray(single["params"]))
        assert difference.max() < 1e-4
    assert single["losses"][-1] < single["losses"][0]  # the steps did train


def test_retrieval_over_a_corpus_split_across_processes_is_exact(reports):
    single_device = reports[0]["top_40_single_device"]
    assert len(single_device) == 3 and len(single_device[0]) == 40
    for report in reports:
        assert report["top_40"] == single_device


def test_a_checkpoint_both_processes_wrote_restores_on_one_device_bit_for_bit(reports):
    import equinox as eqx
    import jax
    from jax.sharding import SingleDeviceSharding

    from phoenix_eqx.training import CheckpointManager, init_optimizer

    single, *parts = reports
    # Every process's replica of the trained state is the same, bit for bit.
    assert len({part["state_digest"] for part in parts}) == 1
    assert parts[0]["checkpoint_dir"] == parts[1]["checkpoint_dir"]
    # Arrays whose rows divide by the devices were split across the processes: the checkpoint
    # holds halves that only one process had, each written by its own process.
    assert parts[0]["split_arrays"] == parts[1]["split_arrays"] == single["split_arrays"] > 0
    state = Path(parts[0]["checkpoint_dir"]) / str(STEPS) / "state"
    assert sorted(path.name for path in state.glob("ocdbt.process_*")) == [
        f"ocdbt.process_{index}" for index in range(PROCESSES)
    ]
    _, _, build_ranker, optimizer = _ranker_training(EMB_SIZE, BATCH_SIZE)
    model = eqx.filter_eval_shape(build_ranker)
    opt_state = eqx.filter_eval_shape(init_optimizer, optimizer, model)
    one_device = SingleDeviceSharding(jax.devices()[0])
    for report in (single, parts[0]):
        with CheckpointManager(report["checkpoint_dir"]) as checkpoints:
            restored = checkpoints.restore(model, opt_state, shardings=one_device)
        assert restored.step == STEPS and restored.data_position == {"step": STEPS}
        assert _digest((restored.model, restored.opt_state)) == report["state_digest"]


def test_one_process_feeds_every_row_and_bad_inputs_are_named():
    """In this (one-process) interpreter: the helpers reduce to `shard_batch`."""
    import jax
    from jax.sharding import PartitionSpec

    from phoenix_eqx import distributed

    mesh = distributed.global_mesh("rows")
    count = len(jax.devices())
    assert distributed.process_local_slice(2 * count, mesh, "rows") == slice(0, 2 * count)
    tree = {"x": np.arange(2 * count * 3).reshape(2 * count, 3), "name": "kept"}
    placed = distributed.make_global_batch(tree, mesh, "rows")
    np.testing.assert_array_equal(np.asarray(placed["x"]), tree["x"])
    assert placed["name"] == "kept" and placed["x"].sharding.spec == PartitionSpec("rows")
    with pytest.raises(ValueError, match="local_tree: expected arrays whose leading size"):
        distributed.make_global_batch({"x": np.float32(1.0)}, mesh, "rows")
    with pytest.raises(ValueError, match="axis_name: expected one of the mesh axes"):
        distributed.process_local_slice(count, mesh, "batch")


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="One worker of the multi-process check; prints a JSON report."
    )
    parser.add_argument("--coordinator", help="host:port of process 0 (several processes)")
    parser.add_argument("--num-processes", type=int, default=1)
    parser.add_argument("--process-id", type=int, default=0)
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument("--emb-size", type=int, default=EMB_SIZE)
    parser.add_argument(
        "--checkpoint-dir", help="save the trained state here (every process the same path)"
    )
    return parser.parse_args()


if __name__ == "__main__":
    print(json.dumps(_worker(_arguments())))
