"""End-to-end benchmark: `python -m phoenix_eqx.bench_e2e [--quick]`.

Times the whole ranker forward and retrieval (user tower + top-k over a corpus) at the `e2e`
config of BENCHMARKS.md section 3, the pure-XLA path (`implementation="xla"`) beside the kernel
path (`"auto"`) and the prefix-cached ranker (`serving.rank_chunked`), in one run. Before
timing, every path's outputs are checked against the XLA path's. Prints a table and writes JSON;
exits 1 if the paths disagree. `--quick` shrinks every size for a CPU smoke run.
"""

import argparse
import dataclasses
import datetime
import math
import platform
import sys
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .config import PhoenixModelConfig, PhoenixRetrievalModelConfig, TransformerConfig
from .example_data import create_example_batch, create_example_corpus
from .kernels._bench_util import device_description, time_ms, write_json
from .kernels._dispatch import is_hopper_gpu
from .ranker import PhoenixModel
from .retrieval import PhoenixRetrievalModel
from .serving import rank_chunked

# The seed's e2e figures on one H100 (BENCHMARKS.md section 3), and the targets against them.
SEED_RANKER_CANDIDATES_PER_S = 574_000
SEED_RETRIEVAL_USERS_PER_S = 1_423
TARGET_RANKER_SPEEDUP = 7.0
TARGET_RETRIEVAL_SPEEDUP = 5.0
# Agreement between paths: bf16 probabilities and shared top-k items.
PROBABILITY_TOLERANCE = 3e-2
MIN_TOP_K_OVERLAP = 0.95


@dataclasses.dataclass(frozen=True)
class Shapes:
    emb_size: int
    num_layers: int
    num_q_heads: int
    num_kv_heads: int
    key_size: int
    history: int
    ranker_batch: int
    candidates: int
    retrieval_batch: int
    corpus_size: int
    top_k: int


E2E = Shapes(1024, 4, 8, 2, 128, 1023, 8, 1024, 64, 1_000_000, 100)
QUICK = Shapes(64, 2, 4, 2, 16, 63, 2, 64, 4, 4096, 10)


def transformer_config(shapes: Shapes, implementation: str) -> TransformerConfig:
    """The seed's options (causal history, sequential positions, tanh cap) at these sizes."""
    return TransformerConfig(
        emb_size=shapes.emb_size,
        key_size=shapes.key_size,
        num_q_heads=shapes.num_q_heads,
        num_kv_heads=shapes.num_kv_heads,
        num_layers=shapes.num_layers,
        widening_factor=2.0,
        attn_output_multiplier=1.0 / math.sqrt(shapes.key_size),
        attention_implementation=implementation,
    )


def build_models(
    shapes: Shapes, implementation: str, key
) -> tuple[PhoenixModel, PhoenixRetrievalModel]:
    """Both models at `shapes`; the same `key` gives the same weights for every implementation."""
    ranker_key, retrieval_key = jax.random.split(key)
    common = dict(
        emb_size=shapes.emb_size, history_seq_len=shapes.history, fprop_dtype=jnp.bfloat16
    )
    ranker_config = PhoenixModelConfig(
        model=transformer_config(shapes, implementation),
        candidate_seq_len=shapes.candidates,
        **common,
    )
    retrieval_config = PhoenixRetrievalModelConfig(
        model=transformer_config(shapes, implementation), **common
    )
    ranker = eqx.filter_jit(lambda k: PhoenixModel(ranker_config, key=k))(ranker_key)
    retrieval = eqx.filter_jit(lambda k: PhoenixRetrievalModel(retrieval_config, key=k))(
        retrieval_key
    )
    return ranker, retrieval


def example_inputs(shapes: Shapes, batch_size: int, candidates: int, key):
    return eqx.filter_jit(
        lambda k: create_example_batch(
            batch_size, shapes.emb_size, shapes.history, candidates, key=k
        )
    )(key)


def _max_abs(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))))


def _top_k_overlap(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    shared = [len(set(row_a) & set(row_b)) for row_a, row_b in zip(a, b, strict=True)]
    return float(np.sum(shared) / a.size)


def compiled(function, model, *args):
    """A no-argument call of `jax.jit(function)(model, *args)`.

    Jitted over the model's arrays with everything else closed over, so a timed call pays
    only `jax.jit`'s C++ dispatch, and checking and timing share one compilation.
    """
    params, static = eqx.partition(model, eqx.is_array)
    jitted = jax.jit(lambda params, *args: function(eqx.combine(params, static), *args))
    return lambda: jitted(params, *args)


def run(shapes: Shapes, *, iters: int, warmup: int, candidate_chunk: int, seed: int) -> dict:
    key = jax.random.key(seed)
    model_key, ranker_inputs_key, retrieval_inputs_key, corpus_key = jax.random.split(key, 4)
    models = {impl: build_models(shapes, impl, model_key) for impl in ("xla", "auto")}
    rank_batch, rank_embeddings = example_inputs(
        shapes, shapes.ranker_batch, shapes.candidates, ranker_inputs_key
    )
    user_batch, user_embeddings = example_inputs(
        shapes, shapes.retrieval_batch, 1, retrieval_inputs_key
    )
    vectors, _ = eqx.filter_jit(
        lambda k: create_example_corpus(shapes.corpus_size, shapes.emb_size, key=k)
    )(corpus_key)
    corpus_mask = jnp.ones(vectors.shape[0], bool)

    ranker_inputs = (rank_batch, rank_embeddings)
    ranker_jobs = {
        "ranker xla": compiled(PhoenixModel.rank, models["xla"][0], *ranker_inputs),
        "ranker auto": compiled(PhoenixModel.rank, models["auto"][0], *ranker_inputs),
        "ranker auto prefix-cache": compiled(
            lambda m, b, e: rank_chunked(m, b, e, candidate_chunk=candidate_chunk),
            models["auto"][0],
            *ranker_inputs,
        ),
    }
    retrieval_inputs = (user_batch, user_embeddings, vectors, corpus_mask)
    retrieval_jobs = {
        f"retrieval {impl}": (
            compiled(
                lambda m, b, e, c, mask, i=impl: m(b, e, c, shapes.top_k, mask, implementation=i),
                models[impl][1],
                *retrieval_inputs,
            ),
            compiled(PhoenixRetrievalModel.encode_users, models[impl][1], *retrieval_inputs[:2]),
        )
        for impl in ("xla", "auto")
    }

    # Agreement first: every path against the pure-XLA one.
    checks = {}
    valid = np.asarray(rank_batch.candidate_valid)
    reference = np.asarray(ranker_jobs["ranker xla"]().probabilities)[valid]
    for name, job in ranker_jobs.items():
        diff = _max_abs(np.asarray(job().probabilities)[valid], reference)
        checks[name] = {"max_abs_probability_diff": diff, "agree": diff <= PROBABILITY_TOLERANCE}
    reference = retrieval_jobs["retrieval xla"][0]()
    for name, (job, _) in retrieval_jobs.items():
        output = job()
        overlap = _top_k_overlap(output.top_k_indices, reference.top_k_indices)
        checks[name] = {
            "top_k_overlap": overlap,
            "max_abs_user_diff": _max_abs(
                output.user_representation, reference.user_representation
            ),
            "agree": overlap >= MIN_TOP_K_OVERLAP,
        }
    del reference

    rows = []
    for name, job in ranker_jobs.items():
        ms = time_ms(job, warmup=warmup, iters=iters)
        per_s = shapes.ranker_batch * shapes.candidates / (ms / 1e3)
        rows.append(
            {
                "job": name,
                "ms": ms,
                "candidates_per_s": per_s,
                "vs_seed": per_s / SEED_RANKER_CANDIDATES_PER_S,
                **checks[name],
            }
        )
    for name, (job, tower) in retrieval_jobs.items():
        ms = time_ms(job, warmup=warmup, iters=iters)
        per_s = shapes.retrieval_batch / (ms / 1e3)
        rows.append(
            {
                "job": name,
                "ms": ms,
                "user_tower_ms": time_ms(tower, warmup=warmup, iters=iters),
                "users_per_s": per_s,
                "vs_seed": per_s / SEED_RETRIEVAL_USERS_PER_S,
                **checks[name],
            }
        )
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": device_description(),
        "host": platform.node(),
        "shapes": dataclasses.asdict(shapes),
        "dtype": "bfloat16 forward, float32 corpus",
        # "auto" runs the Pallas kernels only on a Hopper GPU; elsewhere it is the XLA path.
        "auto_runs_kernels": is_hopper_gpu(),
        "iters": iters,
        "candidate_chunk": candidate_chunk,
        "targets": {
            "ranker_candidates_per_s": TARGET_RANKER_SPEEDUP * SEED_RANKER_CANDIDATES_PER_S,
            "retrieval_users_per_s": TARGET_RETRIEVAL_SPEEDUP * SEED_RETRIEVAL_USERS_PER_S,
        },
        "rows": rows,
    }


def format_table(result: dict) -> str:
    header = (
        f"{'job':<26} {'ms':>9} {'tower ms':>9} {'cand/s':>12} {'users/s':>10} "
        f"{'x seed':>7} {'agree':>6}  check"
    )
    kernels = "Pallas kernels" if result["auto_runs_kernels"] else "the XLA path (no Hopper GPU)"
    lines = [
        f"{result['device']}  {result['shapes']}",
        f"'auto' rows run {kernels}",
        header,
        "-" * len(header),
    ]
    for row in result["rows"]:
        tower = f"{row['user_tower_ms']:.3f}" if "user_tower_ms" in row else "-"
        candidates = f"{row['candidates_per_s']:,.0f}" if "candidates_per_s" in row else "-"
        users = f"{row['users_per_s']:,.0f}" if "users_per_s" in row else "-"
        check = (
            f"overlap {row['top_k_overlap']:.3f}"
            if "top_k_overlap" in row
            else f"max|dp| {row['max_abs_probability_diff']:.2e}"
        )
        lines.append(
            f"{row['job']:<26} {row['ms']:>9.3f} {tower:>9} {candidates:>12} {users:>10} "
            f"{row['vs_seed']:>7.2f} {str(row['agree']):>6}  {check}"
        )
    targets = result["targets"]
    lines.append(
        f"targets (H100): ranker >= {targets['ranker_candidates_per_s']:,.0f} candidates/s, "
        f"retrieval >= {targets['retrieval_users_per_s']:,.0f} users/s; "
        "'x seed' is against the seed's H100 figures"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m phoenix_eqx.bench_e2e", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny shapes: a CPU smoke run")
    parser.add_argument("--iters", type=int, default=None, help="timed runs (median kept)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--candidate-chunk",
        type=int,
        default=None,
        help="chunk of the prefix-cached ranker (default: all candidates)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=Path("bench_results/e2e.json"))
    args = parser.parse_args(argv)
    shapes = QUICK if args.quick else E2E
    iters = args.iters if args.iters is not None else (3 if args.quick else 20)
    chunk = args.candidate_chunk if args.candidate_chunk is not None else shapes.candidates
    for name, value in (
        ("--iters", iters),
        ("--candidate-chunk", chunk),
        ("--warmup", args.warmup),
    ):
        if value < (0 if name == "--warmup" else 1):
            parser.error(f"{name}: expected a positive int, got {value}")
    result = run(shapes, iters=iters, warmup=args.warmup, candidate_chunk=chunk, seed=args.seed)
    arguments = sys.argv[1:] if argv is None else argv
    result["command"] = " ".join(["python -m phoenix_eqx.bench_e2e", *arguments])
    print(format_table(result))
    write_json(args.json, result)
    print(f"results: {args.json}")
    if not all(row["agree"] for row in result["rows"]):
        print("error: the kernel path disagrees with the XLA path (see 'agree')", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
