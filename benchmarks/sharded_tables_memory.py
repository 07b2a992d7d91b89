"""Per-device memory (and step time) of a ranker train step with row-sharded vs replicated hash
tables, on emulated CPU devices; prints one JSON line. Run from the repository root:

    JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=8 \
        python -m benchmarks.sharded_tables_memory --rows 131072 --emb-size 64

Table bytes are read from each table's shard on device 0; the step's bytes are XLA's
per-device buffer sizes of the compiled program (`memory_analysis`): its arguments (model,
optimiser state, example), outputs and temporaries.
"""

import argparse
import json
import statistics
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

import phoenix_eqx as px
from phoenix_eqx import distributed
from phoenix_eqx.config import transformer_config
from phoenix_eqx.training import (
    RankingExample,
    TrainableRanker,
    init_optimizer,
    make_train_step,
    ranking_objective,
    rowwise_adagrad_for_tables,
)

MIB = 2**20


def _table_mib_on_first_device(tables: px.HashEmbeddingTables) -> float:
    arrays = (tables.user_table, tables.post_table, tables.author_table)
    return sum(array.addressable_shards[0].data.nbytes for array in arrays) / MIB


def measure(model, example, steps: int) -> dict:
    optimizer = rowwise_adagrad_for_tables(optax.adam(1e-3), 0.05)
    step = make_train_step(ranking_objective, optimizer)
    opt_state = init_optimizer(optimizer, model)
    # `.compiled`: the jax program inside equinox's wrapper.
    memory = step.lower(model, opt_state, example).compile().compiled.memory_analysis()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        model, opt_state, aux = step(model, opt_state, example)
        jax.block_until_ready(aux)
        times.append(time.perf_counter() - start)
    return {
        "table_mib_per_device": _table_mib_on_first_device(model.tables),
        "step_argument_mib_per_device": memory.argument_size_in_bytes / MIB,
        "step_output_mib_per_device": memory.output_size_in_bytes / MIB,
        "step_temp_mib_per_device": memory.temp_size_in_bytes / MIB,
        "median_step_ms_after_first": 1e3 * statistics.median(times[1:]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=131072, help="rows of each of the 3 tables")
    parser.add_argument("--emb-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()

    config = px.PhoenixModelConfig(
        # The builder's scale at key 32 would be 1/sqrt(32); the measured run used 0.125.
        model=transformer_config(args.emb_size, 32, 2, 2, 2, attn_output_multiplier=0.125),
        emb_size=args.emb_size,
        history_seq_len=16,
        candidate_seq_len=8,
    )
    model = TrainableRanker(config, args.rows, args.rows, args.rows, key=jax.random.key(0))
    batch, _ = eqx.filter_jit(px.create_example_batch)(
        args.batch_size,
        args.emb_size,
        config.history_seq_len,
        config.candidate_seq_len,
        config.num_actions,
        product_surface_vocab_size=config.product_surface_vocab_size,
        key=jax.random.key(1),
        table_size=args.rows,
    )
    labels = jax.random.bernoulli(
        jax.random.key(2), 0.3, (args.batch_size, config.candidate_seq_len, config.num_actions)
    )
    example = RankingExample(batch=batch, labels=labels.astype(jnp.float32))
    mesh = distributed.make_mesh("table")
    report = {
        "devices": len(jax.devices()),
        "rows_per_table": args.rows,
        "emb_size": args.emb_size,
        "sharded": measure(px.nn.shard_tables(model, mesh), example, args.steps),
        "replicated": measure(distributed.replicate(model, mesh), example, args.steps),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
