"""End-to-end benchmark: `python -m benchmarks.e2e [--quick]`.

Times the whole ranker forward and retrieval (user tower + top-k over a corpus) at the `e2e`
config of docs/benchmarks.md (`benchmarks.shapes.E2E`), in one run: the pure-XLA path
(`implementation="xla"`, a float32 corpus as the seed had), the kernel path (`"pallas"`: the
attention kernel in every layer, the top-k kernel over a bfloat16 corpus) and the
prefix-cached ranker (`inference.rank(..., candidate_chunk=...)` on the kernel path). Before
timing, every path is checked against an independent one: the kernel paths' ranker
probabilities and user vectors against the XLA path's, and every retrieval path's top-k against
a NumPy full sort of its own users' scores. Times are device times per call
(`benchmarks.timing.device_time`). Prints a table and writes JSON; exits 1 if a check fails.
`--quick` shrinks every size for a CPU smoke run, where the kernels run in Mosaic GPU's
interpreter (off a Hopper GPU they always do).
"""

import argparse
import dataclasses
import datetime
import inspect
import platform
import sys
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from phoenix_eqx.kernels.dispatch import is_hopper_gpu

from benchmarks.shapes import E2E, E2E_QUICK, ModelShapes
from benchmarks.timing import device_description, device_time, kernel_mode, write_json
from benchmarks.topk import H100_CEILINGS, Ceilings
from phoenix_eqx import inference
from phoenix_eqx.config import PhoenixModelConfig, PhoenixRetrievalModelConfig, transformer_config
from phoenix_eqx.example_data import create_example_batch, create_example_corpus
from phoenix_eqx.ranker import PhoenixModel
from phoenix_eqx.retrieval import PhoenixRetrievalModel

# The seed's e2e figures on one H100 and the targets (docs/benchmarks.md): against the seed
# and against the XLA path measured in the same run.
SEED_RANKER_CANDIDATES_PER_S = 574_000
SEED_RETRIEVAL_USERS_PER_S = 1_423
TARGET_RANKER_SPEEDUP = 7.0
TARGET_RETRIEVAL_SPEEDUP = 5.0
# Agreement: bf16 probabilities and user vectors of two attention implementations; the top-k
# against a full sort of the same users' scores (few near-ties may swap).
PROBABILITY_TOLERANCE = 3e-2
USER_VECTOR_TOLERANCE = 3e-2
MIN_TOP_K_OVERLAP = 0.95
SCORE_TOLERANCE = 2e-2
# Users whose scores against the whole corpus the NumPy check computes on the host.
SORT_CHECK_USERS = 8

KERNEL_IMPLEMENTATION = "pallas"
PATHS = {"xla": "xla", "kernels": KERNEL_IMPLEMENTATION}


def build_models(
    shapes: ModelShapes, implementation: str, key
) -> tuple[PhoenixModel, PhoenixRetrievalModel]:
    """Both models at `shapes`; the same `key` gives the same weights for every implementation.

    Built eagerly: a second build (another implementation) reuses the first one's compiled
    ops, where a jitted build would compile the whole initialisation again. The transformer
    has the library builder's seed options (causal history, sequential positions, tanh cap,
    widening 2, logit scale 1/sqrt(key_size))."""
    ranker_key, retrieval_key = jax.random.split(key)
    transformer = transformer_config(
        shapes.emb_size,
        shapes.key_size,
        shapes.num_q_heads,
        shapes.num_kv_heads,
        shapes.num_layers,
        attention_implementation=implementation,
    )
    common = dict(
        emb_size=shapes.emb_size, history_seq_len=shapes.history, fprop_dtype=jnp.bfloat16
    )
    ranker_config = PhoenixModelConfig(
        model=transformer,
        candidate_seq_len=shapes.candidates,
        **common,
    )
    retrieval_config = PhoenixRetrievalModelConfig(model=transformer, **common)
    ranker = PhoenixModel(ranker_config, key=ranker_key)
    retrieval = PhoenixRetrievalModel(retrieval_config, key=retrieval_key)
    return ranker, retrieval


def example_inputs(shapes: ModelShapes, batch_size: int, candidates: int, key):
    """Random example inputs (jitted: made eagerly, each of their many ops would compile)."""
    return eqx.filter_jit(
        lambda k: create_example_batch(
            batch_size, shapes.emb_size, shapes.history, candidates, key=k
        )
    )(key)


def make_corpus(vectors: jax.Array, dtype) -> inference.Corpus:
    """`set_corpus` storing the vectors in `dtype` (its `dtype=` where it has one)."""
    if "dtype" in inspect.signature(inference.set_corpus).parameters:
        return inference.set_corpus(vectors, dtype=jnp.dtype(dtype))
    return inference.set_corpus(vectors.astype(dtype))


@dataclasses.dataclass(frozen=True)
class Job:
    """`fn(*args)`, a `jax.jit` function over the model's arrays and the inputs (everything
    else closed over), so that checking and timing share one compilation."""

    fn: object
    args: tuple

    def __call__(self):
        return self.fn(*self.args)


def job(function, model, *args) -> Job:
    params, static = eqx.partition(model, eqx.is_array)
    array_args, static_args = eqx.partition(args, eqx.is_array)

    def run(params, array_args):
        return function(eqx.combine(params, static), *eqx.combine(array_args, static_args))

    return Job(jax.jit(run), (params, array_args))


def matmul_parameters(model) -> int:
    """Weights of the transformer's matrices (stacked layers: every array of 2+ dims; the
    norms' few scales are counted too)."""
    leaves = jax.tree.leaves(eqx.filter(model.transformer, eqx.is_array))
    return int(sum(leaf.size for leaf in leaves if leaf.ndim >= 2))


def attention_flops(shapes: ModelShapes, batch: int, candidates: int) -> float:
    """Useful attention FLOPs of all layers (causal prefix, candidates see prefix + self)."""
    prefix = shapes.prefix
    pairs = prefix * (prefix + 1) // 2 + candidates * (prefix + 1)
    per_layer = 4 * shapes.key_size * shapes.num_q_heads * batch * pairs
    return float(per_layer * shapes.num_layers)


def floors_ms(shapes: ModelShapes, ranker, retrieval, ceilings: Ceilings) -> dict[str, float]:
    """Rough floors: the transformer's matmuls and useful attention at the matmul rate
    (embeddings and output heads left out); retrieval adds max(reading the bf16 corpus, the
    score matmul). Both are lower bounds of the true work."""
    rate = ceilings.matmul_flop_per_s
    tokens = shapes.ranker_batch * (shapes.prefix + shapes.candidates)
    ranker_flops = 2 * tokens * matmul_parameters(ranker) + attention_flops(
        shapes, shapes.ranker_batch, shapes.candidates
    )
    users = shapes.retrieval_batch
    tower_flops = 2 * users * shapes.prefix * matmul_parameters(retrieval)
    tower_flops += attention_flops(shapes, users, 0)
    corpus_bytes = shapes.corpus_size * shapes.emb_size * 2
    top_k_s = max(
        corpus_bytes / ceilings.copy_bytes_per_s,
        2 * users * shapes.corpus_size * shapes.emb_size / rate,
    )
    return {
        "ranker": ranker_flops / rate * 1e3,
        "retrieval": (tower_flops / rate + top_k_s) * 1e3,
    }


def _max_abs(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))))


def sort_check(output, corpus: inference.Corpus, k: int) -> dict:
    """The top-k of `output` against a NumPy full sort of its own users' scores (the first
    `SORT_CHECK_USERS`), computed on the host from the corpus as stored."""
    users = np.asarray(output.user_representation[:SORT_CHECK_USERS])
    vectors = corpus.embeddings
    # The op casts the queries to the corpus dtype and accumulates in float32.
    users = np.asarray(jnp.asarray(users).astype(vectors.dtype), np.float32)
    scores = users @ np.asarray(vectors, np.float32).T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    got = np.asarray(output.top_k_indices[: len(users)])
    shared = [len(set(a) & set(b)) for a, b in zip(got, order, strict=True)]
    overlap = float(np.sum(shared) / order.size)
    want_scores = np.take_along_axis(scores, order, axis=1)
    score_error = _max_abs(np.asarray(output.top_k_scores[: len(users)]), want_scores)
    return {
        "top_k_overlap_vs_numpy_sort": overlap,
        "max_abs_score_diff_vs_numpy_sort": score_error,
        "agree": overlap >= MIN_TOP_K_OVERLAP and score_error <= SCORE_TOLERANCE,
    }


def run(
    shapes: ModelShapes,
    *,
    iters: int,
    warmup: int,
    candidate_chunk: int,
    seed: int,
    ceilings: Ceilings = H100_CEILINGS,
    max_seconds: float | None = None,
) -> dict:
    """Build, check, then time every job; the results as a JSON-able dict (`rows`, `agree`)."""
    key = jax.random.key(seed)
    model_key, ranker_inputs_key, retrieval_inputs_key, corpus_key = jax.random.split(key, 4)
    models = {path: build_models(shapes, impl, model_key) for path, impl in PATHS.items()}
    rank_batch, rank_embeddings = example_inputs(
        shapes, shapes.ranker_batch, shapes.candidates, ranker_inputs_key
    )
    if shapes.retrieval_batch == shapes.ranker_batch:  # the user tower ignores candidates
        user_batch, user_embeddings = rank_batch, rank_embeddings
    else:
        user_batch, user_embeddings = example_inputs(
            shapes, shapes.retrieval_batch, 1, retrieval_inputs_key
        )
    vectors, _ = create_example_corpus(shapes.corpus_size, shapes.emb_size, key=corpus_key)
    corpora = {
        "xla": make_corpus(vectors, jnp.float32),
        "kernels": make_corpus(vectors, jnp.bfloat16),
    }
    del vectors

    ranker_inputs = (rank_batch, rank_embeddings)
    ranker_jobs = {
        "ranker xla": job(inference.rank, models["xla"][0], *ranker_inputs),
        "ranker kernels": job(inference.rank, models["kernels"][0], *ranker_inputs),
        "ranker kernels prefix-cache": job(
            lambda m, b, e: inference.rank(m, b, e, candidate_chunk=candidate_chunk),
            models["kernels"][0],
            *ranker_inputs,
        ),
    }
    k = shapes.top_k
    retrieval_jobs = {
        f"retrieval {path}": (
            job(
                lambda m, b, e, c, i=impl: inference.retrieve(m, b, e, c, k, implementation=i),
                models[path][1],
                user_batch,
                user_embeddings,
                corpora[path],
            ),
            job(inference.encode_users, models[path][1], user_batch, user_embeddings),
        )
        for path, impl in PATHS.items()
    }

    # Checks first, each path against an independent one.
    checks = {}
    valid = np.asarray(rank_batch.candidate_valid)
    reference = np.asarray(ranker_jobs["ranker xla"]().probabilities)[valid]
    checks["ranker xla"] = {"agree": bool(np.all(np.isfinite(reference))), "reference": True}
    for name in ("ranker kernels", "ranker kernels prefix-cache"):
        diff = _max_abs(np.asarray(ranker_jobs[name]().probabilities)[valid], reference)
        checks[name] = {
            "max_abs_probability_diff_vs_xla": diff,
            "agree": diff <= PROBABILITY_TOLERANCE,
        }
    xla_users = None
    for name, (retrieval_job, _) in retrieval_jobs.items():
        output = retrieval_job()
        path = name.split()[1]
        checks[name] = sort_check(output, corpora[path], k)
        if xla_users is None:
            xla_users = np.asarray(output.user_representation)
        else:
            diff = _max_abs(output.user_representation, xla_users)
            checks[name]["max_abs_user_diff_vs_xla"] = diff
            checks[name]["agree"] = checks[name]["agree"] and diff <= USER_VECTOR_TOLERANCE
    del reference, output

    model_floors = floors_ms(shapes, models["xla"][0], models["xla"][1], ceilings)
    timing = dict(iters=iters, warmup=warmup, max_seconds=max_seconds)
    rows = []
    for name, ranker_job in ranker_jobs.items():
        measured = device_time(ranker_job.fn, *ranker_job.args, **timing)
        per_s = shapes.ranker_batch * shapes.candidates / (measured.ms / 1e3)
        rows.append(
            {
                "job": name,
                "ms": measured.ms,
                "candidates_per_s": per_s,
                "floor_ms": model_floors["ranker"],
                "of_floor": model_floors["ranker"] / measured.ms,
                "vs_seed_h100": per_s / SEED_RANKER_CANDIDATES_PER_S,
                **checks[name],
                "timing": measured.as_dict(),
            }
        )
    for name, (retrieval_job, tower_job) in retrieval_jobs.items():
        measured = device_time(retrieval_job.fn, *retrieval_job.args, **timing)
        # The tower alone was not run by the checks: warm it up at least once.
        tower = device_time(tower_job.fn, *tower_job.args, **{**timing, "warmup": max(warmup, 1)})
        per_s = shapes.retrieval_batch / (measured.ms / 1e3)
        rows.append(
            {
                "job": name,
                "ms": measured.ms,
                "user_tower_ms": tower.ms,
                "users_per_s": per_s,
                "floor_ms": model_floors["retrieval"],
                "of_floor": model_floors["retrieval"] / measured.ms,
                "vs_seed_h100": per_s / SEED_RETRIEVAL_USERS_PER_S,
                **checks[name],
                "timing": measured.as_dict(),
                "user_tower_timing": tower.as_dict(),
            }
        )
    by_job = {row["job"]: row for row in rows}
    for row in rows:
        kind = row["job"].split()[0]
        row["vs_xla"] = by_job[f"{kind} xla"]["ms"] / row["ms"]
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": device_description(),
        "host": platform.node(),
        "shapes": dataclasses.asdict(shapes),
        "dtype": "bfloat16 forward; corpus float32 (xla path), bfloat16 (kernel path)",
        "kernel_implementation": KERNEL_IMPLEMENTATION,
        "kernels_interpreted": not is_hopper_gpu(),
        "iters": iters,
        "candidate_chunk": candidate_chunk,
        "ceilings": dataclasses.asdict(ceilings),
        "targets": {
            "ranker_vs_xla": TARGET_RANKER_SPEEDUP,
            "retrieval_vs_xla": TARGET_RETRIEVAL_SPEEDUP,
            "ranker_candidates_per_s_vs_seed_h100": TARGET_RANKER_SPEEDUP
            * SEED_RANKER_CANDIDATES_PER_S,
            "retrieval_users_per_s_vs_seed_h100": TARGET_RETRIEVAL_SPEEDUP
            * SEED_RETRIEVAL_USERS_PER_S,
        },
        "agree": all(row["agree"] for row in rows),
        "rows": rows,
    }


def format_table(result: dict) -> str:
    header = (
        f"{'job':<28} {'ms':>9} {'tower ms':>9} {'cand/s':>12} {'users/s':>10} "
        f"{'x xla':>6} {'of floor':>8} {'agree':>6}  check"
    )
    lines = [
        f"{result['device']}  {result['shapes']}",
        "kernel rows run the Pallas kernels"
        + (" in the interpreter (no Hopper GPU)" if result["kernels_interpreted"] else ""),
        header,
        "-" * len(header),
    ]
    for row in result["rows"]:
        tower = f"{row['user_tower_ms']:.3f}" if "user_tower_ms" in row else "-"
        candidates = f"{row['candidates_per_s']:,.0f}" if "candidates_per_s" in row else "-"
        users = f"{row['users_per_s']:,.0f}" if "users_per_s" in row else "-"
        if "top_k_overlap_vs_numpy_sort" in row:
            check = f"top-k vs numpy sort {row['top_k_overlap_vs_numpy_sort']:.3f}"
            if "max_abs_user_diff_vs_xla" in row:
                check += f", users |d| {row['max_abs_user_diff_vs_xla']:.1e}"
        elif "max_abs_probability_diff_vs_xla" in row:
            check = f"probs vs xla |d| {row['max_abs_probability_diff_vs_xla']:.1e}"
        else:
            check = "reference"
        lines.append(
            f"{row['job']:<28} {row['ms']:>9.3f} {tower:>9} {candidates:>12} {users:>10} "
            f"{row['vs_xla']:>6.2f} {row['of_floor']:>8.3f} {str(row['agree']):>6}  {check}"
        )
    lines.append(
        f"targets: ranker >= {TARGET_RANKER_SPEEDUP:g}x and retrieval >= "
        f"{TARGET_RETRIEVAL_SPEEDUP:g}x the XLA path ('x xla'); 'of floor' = floor / time"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.e2e", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny shapes: a CPU smoke run")
    parser.add_argument("--iters", type=int, default=None, help="calls timed back to back")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument(
        "--candidate-chunk",
        type=int,
        default=None,
        help="chunk of the prefix-cached ranker (default: all candidates)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=Path("bench_results/e2e.json"))
    args = parser.parse_args(argv)
    shapes = E2E_QUICK if args.quick else E2E
    interpret = not is_hopper_gpu()
    iters = args.iters if args.iters is not None else (1 if interpret else 20)
    warmup = args.warmup if args.warmup is not None else (0 if interpret else 2)
    chunk = args.candidate_chunk if args.candidate_chunk is not None else shapes.candidates
    for name, value in (("--iters", iters), ("--candidate-chunk", chunk), ("--warmup", warmup)):
        if value < (0 if name == "--warmup" else 1):
            parser.error(f"{name}: expected a positive int, got {value}")
    with kernel_mode(interpret):
        result = run(shapes, iters=iters, warmup=warmup, candidate_chunk=chunk, seed=args.seed)
    arguments = sys.argv[1:] if argv is None else argv
    result["command"] = " ".join(["python -m benchmarks.e2e", *arguments])
    print(format_table(result))
    write_json(args.json, result)
    print(f"results: {args.json}")
    if not result["agree"]:
        print("error: a path disagrees with its independent check (see 'agree')", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
