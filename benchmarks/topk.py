"""Corpus top-k benchmark: `python -m benchmarks.topk [options]`.

Times the Pallas kernel path (and `implementation="auto"`) beside XLA matmul + `lax.top_k`
(stable and unstable) and torch mm + topk (where torch with CUDA is installed) on the shapes of
docs/benchmarks.md (`benchmarks.shapes`), after checking the kernel against an exact
chunked XLA reference. Times are device times per call over back-to-back calls
(`benchmarks.timing.device_time`). Floors
are max(corpus bytes / copy bandwidth, 2BND / matmul rate): from the rates measured in the same
run where the caller measured them (the GPU session does), else the peer H100 rates
(docs/benchmarks.md).
Writes JSON and, where matplotlib is installed, a PNG.
"""

import argparse
import dataclasses
import functools
from collections.abc import Callable, Iterable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from phoenix_eqx.kernels.corpus_top_k.api import corpus_top_k
from phoenix_eqx.kernels.corpus_top_k.merge import top_k_by_chunks
from phoenix_eqx.kernels.dispatch import is_hopper_gpu

from benchmarks.shapes import TOPK_DIM, TOPK_QUICK_SHAPES, TOPK_SHAPES
from benchmarks.timing import (
    Framework,
    device_time,
    peak_memory_bytes,
    plot_grouped_bars,
    run_metadata,
    write_json,
)

IMPLEMENTATIONS = ("pallas", "auto", "xla_stable", "xla_unstable", "torch")


@dataclasses.dataclass(frozen=True)
class Ceilings:
    """The card's device-to-device copy rate (bytes read + written per second) and bf16
    matmul rate, which the floors divide by; `source` says where they come from."""

    copy_bytes_per_s: float
    matmul_flop_per_s: float
    source: str


# the peer H100 rates (docs/benchmarks.md): the floors of a run that measures none of its own.
H100_CEILINGS = Ceilings(3.0e12, 800e12, "docs/benchmarks.md, H100")


def floor_ms(batch: int, num_items: int, dim: int = TOPK_DIM, ceilings: Ceilings = H100_CEILINGS):
    """max(read the bf16 corpus once, the score matmul at the matmul rate), in ms."""
    read_corpus = num_items * dim * 2 / ceilings.copy_bytes_per_s
    matmul = 2 * batch * num_items * dim / ceilings.matmul_flop_per_s
    return max(read_corpus, matmul) * 1e3


def _xla_top_k(queries, corpus, *, k, is_stable):
    scores = jnp.dot(queries.astype(corpus.dtype), corpus.T, preferred_element_type=jnp.float32)
    return jax.lax.top_k(scores, k, is_stable=is_stable)


def _op(queries, corpus, corpus_mask, *, k, implementation, interpret):
    return corpus_top_k(
        queries,
        corpus,
        k,
        corpus_mask=corpus_mask,
        implementation=implementation,
        interpret=interpret,
    )


def _torch_top_k(k: int):
    import torch

    def run(queries, corpus):
        return torch.topk(torch.mm(queries, corpus.T), k, dim=1)

    return run


def torch_unavailable() -> str | None:
    """Why the torch peer cannot run here (None if it can)."""
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    return None if torch.cuda.is_available() else "torch sees no CUDA device"


@functools.cache
def build(name: str, k: int, interpret: bool) -> tuple[Callable, Framework]:
    """One implementation as `(fn, framework)`: `fn(queries, corpus[, mask])`. Cached, so
    that a check and a later timing of the same k share one compilation."""
    if name in ("pallas", "auto"):
        op = functools.partial(_op, k=k, implementation=name, interpret=interpret)
        return jax.jit(op), "jax"
    if name in ("xla_stable", "xla_unstable"):
        return jax.jit(functools.partial(_xla_top_k, k=k, is_stable=name == "xla_stable")), "jax"
    if name == "torch":
        return _torch_top_k(k), "torch"
    raise ValueError(f"implementation: expected one of {IMPLEMENTATIONS}, got {name!r}")


def make_inputs(batch: int, num_items: int, masked: bool, seed: int = 0):
    """Random normal f32 queries, bf16 corpus and (with `masked`) a 90%-valid corpus mask."""
    key_q, key_c, key_m = jax.random.split(jax.random.key(seed), 3)
    queries = jax.random.normal(key_q, (batch, TOPK_DIM), jnp.float32)
    corpus = jax.random.normal(key_c, (num_items, TOPK_DIM), jnp.bfloat16)
    mask = jax.random.bernoulli(key_m, 0.9, (num_items,)) if masked else None
    return queries, corpus, mask


def _extra_bytes(fn, *args) -> int | None:
    """Device bytes a compiled call needs beyond its arguments (temporaries + outputs)."""
    try:
        analysis = fn.lower(*args).compile().memory_analysis()
    except Exception:  # noqa: BLE001 - backends without the analysis
        return None
    if analysis is None:
        return None
    return int(analysis.temp_size_in_bytes + analysis.output_size_in_bytes)


def reference_top_k(queries, corpus, k, mask):
    """The exact chunked XLA reference (f32 accumulation of the corpus-dtype products)."""
    return jax.jit(functools.partial(top_k_by_chunks, k=k, chunk=1 << 20))(
        queries.astype(corpus.dtype), corpus, corpus_mask=mask
    )


def check_against_reference(result, queries, corpus, k, mask, want=None) -> dict:
    """Exact chunked XLA reference: same scores (to rounding), indices valid and mostly equal."""
    want = reference_top_k(queries, corpus, k, mask) if want is None else want
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
        "ok": bool(ok),
        "max_score_error": max_score_error,
        "fraction_same_index": same_index,
        "max_rescore_error": consistent,
    }


def _error(failure: Exception) -> dict:
    return {"status": "error", "error": f"{type(failure).__name__}: {str(failure)[:300]}"}


def run_shape(
    batch: int,
    num_items: int,
    k: int,
    *,
    inputs: tuple | Callable[[], tuple] | None = None,
    masked: bool = False,
    only: Iterable[str] = IMPLEMENTATIONS,
    skipped: dict[str, str] | None = None,
    interpret: bool = False,
    ceilings: Ceilings = H100_CEILINGS,
    iters: int = 20,
    warmup: int = 2,
    max_seconds: float | None = None,
    seed: int = 0,
    want=None,
) -> dict:
    """Check the kernel paths (`pallas`, `auto`) against the reference, then time every one of
    `only` (those in `skipped` are recorded with the reason). `inputs` = (queries, corpus,
    mask), or a function returning them, lets a caller share one corpus between rows; `want`
    is the reference's result, where the caller has it."""
    floor = floor_ms(batch, num_items, TOPK_DIM, ceilings)
    row = {
        "batch": batch,
        "num_items": num_items,
        "k": k,
        "masked": masked,
        "floor_ms": floor,
        "impls": {},
    }
    skipped = skipped or {}
    for name in only:
        if name in skipped:
            row["impls"][name] = {"status": "skipped", "reason": skipped[name]}
    if all(name in skipped for name in only):
        return row
    if inputs is None:
        inputs = make_inputs(batch, num_items, masked, seed)
    queries, corpus, mask = inputs() if callable(inputs) else inputs
    row["masked"] = mask is not None
    for name in only:
        if name in skipped:
            continue
        result: dict = {}
        try:
            fn, framework = build(name, k, interpret)
            if framework == "torch":
                import torch

                args = (torch.from_dlpack(queries.astype(corpus.dtype)), torch.from_dlpack(corpus))
            else:
                args = (queries, corpus, mask) if name in ("pallas", "auto") else (queries, corpus)
                result["extra_bytes"] = _extra_bytes(fn, *args)
            if name in ("pallas", "auto"):
                if want is None:
                    want = reference_top_k(queries, corpus, k, mask)
                result["check"] = check_against_reference(fn(*args), queries, corpus, k, mask, want)
                if not result["check"]["ok"]:
                    row["impls"][name] = {"status": "check failed", **result}
                    continue
            timing = device_time(
                fn,
                *args,
                framework=framework,
                iters=iters,
                warmup=warmup,
                max_seconds=max_seconds,
            )
        except Exception as failure:  # noqa: BLE001 - an OOM peer is a result, not a crash
            row["impls"][name] = {**result, **_error(failure)}
            print(f"  {name}: {row['impls'][name]['error']}", flush=True)
            continue
        row["impls"][name] = {
            "status": "ok",
            "ms": timing.ms,
            "x_floor": timing.ms / floor,
            "of_floor": floor / timing.ms,
            **result,
            "timing": timing.as_dict(),
        }
        print(f"  {name}: {timing.ms:.3f} ms ({timing.ms / floor:.1f}x floor)", flush=True)
    return row


def format_table(rows: list[dict], names: Iterable[str] = IMPLEMENTATIONS) -> str:
    """ms (multiple of the floor) per implementation; 'check' is the kernel path's check."""
    names = list(names)
    lines = ["B x N, k | floor ms | " + " | ".join(names) + " | check"]
    for row in rows:
        cells = []
        for name in names:
            result = row["impls"].get(name)
            if result is None:
                cells.append("-")
            elif result["status"] == "ok":
                cells.append(f"{result['ms']:.3f} ({result['x_floor']:.1f}x)")
            else:
                cells.append(result["status"])
        checks = [r["check"]["ok"] for r in row["impls"].values() if "check" in r]
        check = "-" if not checks else str(all(checks))
        lines.append(
            f"{row['batch']} x {row['num_items']:,}, k={row['k']} | {row['floor_ms']:.3f} | "
            + " | ".join(cells)
            + f" | {check}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.topk")
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
    parser.add_argument("--iters", type=int, default=None, help="calls timed back to back")
    args = parser.parse_args(argv)

    shapes = TOPK_QUICK_SHAPES if args.quick else TOPK_SHAPES
    if args.shape:
        shapes = [_parse_shape(text) for text in args.shape]
    only = tuple(args.impl or IMPLEMENTATIONS)
    skipped = {}
    if "torch" in only:
        reason = "--no-torch" if args.no_torch else torch_unavailable()
        if reason:
            skipped["torch"] = reason
    # Off a Hopper GPU (a smoke run) the kernel runs in the interpreter, far too slow to repeat.
    interpret = not is_hopper_gpu()
    repeats = dict(iters=2, warmup=1) if interpret else dict(iters=20, warmup=2)
    if args.iters is not None:
        repeats["iters"] = args.iters
    metadata = run_metadata()
    rows = []
    for batch, num_items, k in shapes:
        print(f"== {batch} x {num_items:,}, k={k}", flush=True)
        rows.append(
            run_shape(
                batch,
                num_items,
                k,
                masked=args.masked,
                only=only,
                skipped=skipped,
                interpret=interpret,
                **repeats,
            )
        )
        # Rewritten after every shape, so that a run cut short keeps what it measured.
        payload = {
            **metadata,
            "ceilings": dataclasses.asdict(H100_CEILINGS),
            "rows": rows,
            "process_peak_bytes": peak_memory_bytes(),
        }
        write_json(args.out, payload)
    _plot(args.plot or args.out.with_suffix(".png"), rows, metadata["device"])
    print(format_table(rows, only))


def _plot(path: Path, rows, device: str) -> None:
    panels = {}
    for row in rows:
        group = f"{row['batch']}x{row['num_items']:.0e}"
        bars = panels.setdefault(f"k={row['k']}", {})
        for name, result in row["impls"].items():
            if result["status"] == "ok":
                bars.setdefault(name, {})[group] = result["x_floor"]
    panels = {title: bars for title, bars in panels.items() if bars}
    if not panels:
        print("plot: no timed rows, nothing to plot")
        return
    try:
        plot_grouped_bars(
            path, panels, ylabel="time / floor", title=f"corpus top-k, D={TOPK_DIM} bf16, {device}"
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


if __name__ == "__main__":
    main()
