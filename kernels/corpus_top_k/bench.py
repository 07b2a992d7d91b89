"""Corpus top-k benchmark: `python -m phoenix_eqx.kernels.bench topk [options]`.

Times the Pallas kernel path beside XLA matmul + `lax.top_k` (stable and unstable) and torch
mm + topk (where torch with CUDA is installed) on the shapes of BENCHMARKS.md section 2, after
checking the kernel against an exact chunked XLA reference. Writes JSON and, where matplotlib is
installed, a PNG.
"""

import argparse
import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from .._bench_util import peak_memory_bytes, plot_grouped_bars, run_metadata, time_ms, write_json
from .api import corpus_top_k
from .merge import top_k_by_chunks

DIM = 128
COPY_BYTES_PER_S = 3.0e12  # measured device-to-device copy rate (BENCHMARKS.md)
MATMUL_FLOP_PER_S = 800e12  # measured bf16 matmul rate (BENCHMARKS.md)
SHAPES = [  # (batch, num_items, k)
    *((b, n, k) for k in (100, 1000) for n in (1_000_000, 10_000_000) for b in (1, 128, 1024)),
    (1, 10_000_000, 10_000),
]
QUICK_SHAPES = [(1, 3_000, 10), (70, 2_000, 100)]


def floor_ms(batch: int, num_items: int, dim: int = DIM) -> float:
    read_corpus = num_items * dim * 2 / COPY_BYTES_PER_S
    matmul = 2 * batch * num_items * dim / MATMUL_FLOP_PER_S
    return max(read_corpus, matmul) * 1e3


def _xla_top_k(queries, corpus, *, k, is_stable):
    scores = jnp.dot(queries.astype(corpus.dtype), corpus.T, preferred_element_type=jnp.float32)
    return jax.lax.top_k(scores, k, is_stable=is_stable)


def _pallas(k: int):
    # Off the GPU (a smoke run) the kernel runs in the interpreter.
    interpret = jax.devices()[0].platform != "gpu"
    return jax.jit(
        functools.partial(corpus_top_k, k=k, implementation="pallas", interpret=interpret)
    )


IMPLEMENTATIONS = ("pallas", "xla_stable", "xla_unstable", "torch")


def _implementations(k: int, with_torch: bool) -> dict:
    impls = {
        "pallas": _pallas(k),
        "xla_stable": jax.jit(functools.partial(_xla_top_k, k=k, is_stable=True)),
        "xla_unstable": jax.jit(functools.partial(_xla_top_k, k=k, is_stable=False)),
    }
    if with_torch:
        impls["torch"] = _torch_top_k(k)
    return impls


def _torch_top_k(k: int):
    import torch

    def run(queries, corpus):
        return torch.topk(torch.mm(queries, corpus.T), k, dim=1)

    return run


def _torch_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def _time_torch(fn, queries, corpus) -> float:
    import torch

    q = torch.from_dlpack(queries.astype(jnp.bfloat16))
    c = torch.from_dlpack(corpus)
    for _ in range(3):
        fn(q, c)
    torch.cuda.synchronize()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    samples = []
    for _ in range(20):
        start.record()
        fn(q, c)
        stop.record()
        torch.cuda.synchronize()
        samples.append(start.elapsed_time(stop))
    return float(np.median(samples))


def _extra_bytes(fn, *args) -> int | None:
    """Device bytes a compiled call needs beyond its arguments (temporaries + outputs)."""
    try:
        analysis = fn.lower(*args).compile().memory_analysis()
    except Exception:  # noqa: BLE001 - backends without the analysis
        return None
    if analysis is None:
        return None
    return int(analysis.temp_size_in_bytes + analysis.output_size_in_bytes)


def check_against_reference(result, queries, corpus, k, mask) -> dict:
    """Exact chunked XLA reference: same scores (to rounding), indices valid and mostly equal."""
    want = jax.jit(functools.partial(top_k_by_chunks, k=k, chunk=1 << 20))(
        queries.astype(corpus.dtype), corpus, corpus_mask=mask
    )
    got_scores, want_scores = np.asarray(result.scores), np.asarray(want.scores)
    got_indices, want_indices = np.asarray(result.indices), np.asarray(want.indices)
    max_score_error = float(np.max(np.abs(got_scores - want_scores)))
    same_index = float(np.mean(got_indices == want_indices))
    # Rescore the returned indices: they must carry the scores reported for them.
    rescored = np.asarray(
        jnp.einsum(
            "bd,bkd->bk",
            queries.astype(corpus.dtype),
            corpus[jnp.asarray(got_indices)],
            preferred_element_type=jnp.float32,
        )
    )
    consistent = float(np.max(np.abs(rescored - got_scores)))
    ok = max_score_error < 1e-3 and same_index > 0.99 and consistent < 1e-3
    if mask is not None:
        ok = ok and bool(np.asarray(mask)[got_indices].all())
    return {
        "ok": ok,
        "max_score_error": max_score_error,
        "fraction_same_index": same_index,
        "max_rescore_error": consistent,
    }


def run_shape(batch, num_items, k, *, with_torch, masked, only=IMPLEMENTATIONS, seed=0) -> dict:
    key_q, key_c, key_m = jax.random.split(jax.random.key(seed), 3)
    queries = jax.random.normal(key_q, (batch, DIM), jnp.float32)
    corpus = jax.random.normal(key_c, (num_items, DIM), jnp.bfloat16)
    mask = jax.random.bernoulli(key_m, 0.9, (num_items,)) if masked else None
    row = {
        "batch": batch,
        "num_items": num_items,
        "k": k,
        "masked": masked,
        "floor_ms": floor_ms(batch, num_items),
    }
    for name, fn in _implementations(k, with_torch).items():
        if name not in only:
            continue
        try:
            if name == "torch":
                row[f"{name}_ms"] = _time_torch(fn, queries, corpus)
                continue
            args = (queries, corpus)
            if name == "pallas":
                fn = functools.partial(fn, corpus_mask=mask) if masked else fn
                row["pallas_check"] = check_against_reference(fn(*args), queries, corpus, k, mask)
                row["pallas_extra_bytes"] = _extra_bytes(_pallas(k), *args)
            else:
                row[f"{name}_extra_bytes"] = _extra_bytes(fn, *args)
            # The interpreter (a CPU smoke run) is far too slow for many repeats.
            repeats = {} if jax.devices()[0].platform == "gpu" else {"warmup": 1, "iters": 2}
            row[f"{name}_ms"] = time_ms(fn, *args, **repeats)
        except Exception as error:  # noqa: BLE001 - an OOM peer is a result, not a crash
            row[f"{name}_ms"] = None
            row[f"{name}_error"] = f"{type(error).__name__}: {str(error)[:300]}"
        row[f"{name}_floor_multiple"] = (
            row[f"{name}_ms"] / row["floor_ms"] if row.get(f"{name}_ms") else None
        )
        print(name, row.get(f"{name}_ms"), row.get(f"{name}_error", ""), flush=True)
    return row


def _table(rows) -> str:
    names = IMPLEMENTATIONS
    lines = ["B x N, k | floor ms | " + " | ".join(names) + " | check"]
    for row in rows:
        cells = []
        for name in names:
            ms = row.get(f"{name}_ms")
            cells.append("-" if ms is None else f"{ms:.3f} ({ms / row['floor_ms']:.1f}x)")
        check = row.get("pallas_check", {}).get("ok")
        lines.append(
            f"{row['batch']} x {row['num_items']:,}, k={row['k']} | {row['floor_ms']:.3f} | "
            + " | ".join(cells)
            + f" | {check}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m phoenix_eqx.kernels.bench topk")
    parser.add_argument("--out", type=Path, default=Path("bench_results/topk.json"))
    parser.add_argument("--plot", type=Path, default=None, help="PNG path (default: beside --out)")
    parser.add_argument("--quick", action="store_true", help="tiny shapes, for a CPU smoke run")
    parser.add_argument(
        "--shape",
        action="append",
        default=None,
        metavar="BxN:k",
        help="only these shapes, e.g. 128x1000000:100 (repeatable)",
    )
    parser.add_argument("--masked", action="store_true", help="pass a corpus mask (90%% valid)")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument(
        "--impl", action="append", choices=IMPLEMENTATIONS, help="only these (repeatable)"
    )
    args = parser.parse_args(argv)

    shapes = QUICK_SHAPES if args.quick else SHAPES
    if args.shape:
        shapes = [_parse_shape(text) for text in args.shape]
    with_torch = not args.no_torch and _torch_available()
    metadata = run_metadata()
    rows = []
    for batch, num_items, k in shapes:
        print(f"== {batch} x {num_items:,}, k={k}", flush=True)
        only = tuple(args.impl or IMPLEMENTATIONS)
        rows.append(
            run_shape(batch, num_items, k, with_torch=with_torch, masked=args.masked, only=only)
        )
        # Rewritten after every shape, so that a run cut short keeps what it measured.
        write_json(args.out, {**metadata, "rows": rows, "process_peak_bytes": peak_memory_bytes()})
    _plot(args.plot or args.out.with_suffix(".png"), rows, metadata["device"])
    print(_table(rows))


def _plot(path: Path, rows, device: str) -> None:
    panels = {}
    for row in rows:
        group = f"{row['batch']}x{row['num_items']:.0e}"
        bars = panels.setdefault(f"k={row['k']}", {})
        for name in IMPLEMENTATIONS:
            if row.get(f"{name}_floor_multiple") is not None:
                bars.setdefault(name, {})[group] = row[f"{name}_floor_multiple"]
    try:
        plot_grouped_bars(
            path, panels, ylabel="time / floor", title=f"corpus top-k, D={DIM} bf16, {device}"
        )
    except ImportError:
        print("matplotlib is not installed: no plot")


def _parse_shape(text: str) -> tuple[int, int, int]:
    try:
        sizes, k = text.split(":")
        batch, num_items = sizes.lower().split("x")
        return int(batch), int(num_items), int(k)
    except ValueError:
        raise ValueError(f"--shape: expected BxN:k such as 128x1000000:100, got {text!r}") from None
