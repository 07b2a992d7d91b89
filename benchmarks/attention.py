"""Candidate-attention microbenchmark: our kernel beside the XLA reference and the peers.

`python -m benchmarks.attention [options]` (shapes and peers: docs/benchmarks.md; the shapes
live in `benchmarks.shapes`).

Every implementation runs on the same random-normal bf16 inputs and is checked against an f32
run of the pure-JAX reference before it is timed; a row that raises or misses the bf16
tolerance is reported and not timed. The dense-mask peers without a logit cap (cuDNN, torch
SDPA) compute a different function, so they are checked against the reference without the cap.
Peers that are not installed, or need a GPU the run does not have, are skipped with the reason.
Times are device times per call over back-to-back calls (`benchmarks.timing.device_time`:
CUPTI for JAX, CUDA events for torch; on the CPU the host clock around the back-to-back calls).
"""

import argparse
import dataclasses
import functools
import importlib.util
import math
import os
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from phoenix_eqx.kernels.candidate_attention.api import candidate_attention
from phoenix_eqx.kernels.candidate_attention.reference import HistoryMode, candidate_isolation_mask
from phoenix_eqx.kernels.dispatch import is_hopper_gpu

from benchmarks.shapes import ATTENTION_CONFIGS, AttentionConfig, quick_attention_config
from benchmarks.timing import Framework, device_time, plot_grouped_bars, run_metadata, write_json

LOGIT_CAP = 30.0
# Relative L2 error ||out - ref|| / ||ref|| a bf16 implementation must stay within.
TOLERANCE = 2e-2
FWD_BWD_FLOP_FACTOR = 3.5


@dataclasses.dataclass(frozen=True)
class Problem:
    """One config's inputs: bf16 q, k, v and the fwd+bwd cotangent, [batch, seq, heads, dim]."""

    config: AttentionConfig
    history: HistoryMode
    q: jax.Array
    k: jax.Array
    v: jax.Array
    cotangent: jax.Array
    key_valid: jax.Array

    @property
    def scale(self) -> float:
        return 1.0 / math.sqrt(self.config.head_dim)

    def dense_mask(self) -> jax.Array:
        """The allowed (query, key) pairs as the dense [batch, 1, seq, seq] mask the peers take."""
        structural = candidate_isolation_mask(self.config.seq_len, self.config.prefix, self.history)
        return (structural[None] & self.key_valid[:, None, :])[:, None]

    def as_float32(self) -> "Problem":
        cast = {name: getattr(self, name).astype(jnp.float32) for name in ("q", "k", "v")}
        return dataclasses.replace(self, **cast, cotangent=self.cotangent.astype(jnp.float32))


def make_problem(
    config: AttentionConfig, history: HistoryMode, pad_history: bool, seed: int
) -> Problem:
    """Random-normal inputs (never zeros: a wrong kernel must not pass by averaging zeros).

    With `pad_history`, each batch row keeps a random number of its history tokens and the rest
    of the prefix is padding (`key_valid` false); the user token at position 0 and the
    candidates stay valid, so every query keeps at least one key.
    """
    batch, seq_len = config.batch, config.seq_len
    keys = jax.random.split(jax.random.key(seed), 5)
    q_shape = (batch, seq_len, config.q_heads, config.head_dim)
    kv_shape = (batch, seq_len, config.kv_heads, config.head_dim)
    q, k, v, cotangent = (
        jax.random.normal(key, shape, jnp.bfloat16)
        for key, shape in zip(keys[:4], (q_shape, kv_shape, kv_shape, q_shape), strict=True)
    )
    key_valid = jnp.ones((batch, seq_len), bool)
    if pad_history:
        history_len = jax.random.randint(keys[4], (batch, 1), 0, config.prefix)
        position = jnp.arange(seq_len)[None]
        key_valid = (position <= history_len) | (position >= config.prefix)
    return Problem(config, history, q, k, v, cotangent, key_valid)


@dataclasses.dataclass(frozen=True)
class Runner:
    """One compiled step `fn(*args)` of `framework` (a `jax.jit` function, or a torch callable
    on CUDA tensors); `to_numpy` returns its outputs as f32 host arrays in the
    [batch, seq, heads, dim] layout (out, or dq, dk, dv)."""

    fn: Callable
    args: tuple
    framework: Framework
    to_numpy: Callable[[object], list[np.ndarray]]

    def run(self) -> object:
        return self.fn(*self.args)


def _jax_to_numpy(outputs: object) -> list[np.ndarray]:
    return [np.asarray(leaf).astype(np.float32) for leaf in jax.tree.leaves(outputs)]


def _jax_runner(
    attend: Callable[..., jax.Array], mask: jax.Array, problem: Problem, backward: bool
) -> Runner:
    """`attend(q, k, v, mask)` jitted, or the jitted gradient of sum(out * cotangent) w.r.t.
    q, k, v. The inputs go in as arguments so that XLA cannot fold them into constants."""
    if backward:

        def loss(q, k, v, cotangent, mask):
            out = attend(q, k, v, mask)
            return jnp.sum(out.astype(jnp.float32) * cotangent.astype(jnp.float32))

        step = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
        args = (problem.q, problem.k, problem.v, problem.cotangent, mask)
    else:
        step = jax.jit(attend)
        args = (problem.q, problem.k, problem.v, mask)
    return Runner(step, args, "jax", _jax_to_numpy)


def _ours_attend(
    problem: Problem, implementation: str, interpret: bool, logit_cap: float | None
) -> Callable[..., jax.Array]:
    def attend(q, k, v, key_valid):
        return candidate_attention(
            q,
            k,
            v,
            num_prefix=problem.config.prefix,
            key_valid=key_valid,
            history=problem.history,
            scale=problem.scale,
            logit_cap=logit_cap,
            cap_method="tanh",
            implementation=implementation,
            interpret=interpret,
        )

    return attend


def _phoenix_runner(implementation: str, interpret: bool):
    def build(problem: Problem, backward: bool) -> Runner:
        attend = _ours_attend(problem, implementation, interpret, LOGIT_CAP)
        return _jax_runner(attend, problem.key_valid, problem, backward)

    return build


def _cudnn_runner(problem: Problem, backward: bool) -> Runner:
    def attend(q, k, v, mask):
        return jax.nn.dot_product_attention(
            q, k, v, mask=mask, scale=problem.scale, implementation="cudnn"
        )

    return _jax_runner(attend, problem.dense_mask(), problem, backward)


def _tokamax_runner(implementation: str):
    def build(problem: Problem, backward: bool) -> Runner:
        import tokamax

        def attend(q, k, v, mask):
            return tokamax.dot_product_attention(
                q,
                k,
                v,
                mask=mask,
                scale=problem.scale,
                logits_soft_cap=LOGIT_CAP,
                implementation=implementation,
            )

        return _jax_runner(attend, problem.dense_mask(), problem, backward)

    return build


def _torch_runner(attend: Callable, problem: Problem, backward: bool) -> Runner:
    """Run `attend(q, k, v)` on CUDA bf16 torch tensors in torch's [batch, heads, seq, dim]."""
    import torch

    def to_torch(array: jax.Array):
        # Through f32 numpy: numpy has no bf16, and the copy is outside the timed region.
        host = np.asarray(array.astype(jnp.float32))
        return torch.from_numpy(host).cuda().to(torch.bfloat16).permute(0, 2, 1, 3).contiguous()

    def to_numpy(outputs) -> list[np.ndarray]:
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        return [x.detach().permute(0, 2, 1, 3).float().cpu().numpy() for x in outputs]

    q, k, v = (to_torch(array) for array in (problem.q, problem.k, problem.v))
    if not backward:
        return Runner(attend, (q, k, v), "torch", to_numpy)
    cotangent = to_torch(problem.cotangent)
    q, k, v = (x.requires_grad_() for x in (q, k, v))

    def step(q, k, v, cotangent):
        return torch.autograd.grad(attend(q, k, v), (q, k, v), cotangent)

    return Runner(step, (q, k, v, cotangent), "torch", to_numpy)


def _flex_runner(problem: Problem, backward: bool) -> Runner:
    import torch
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    config = problem.config
    num_prefix, causal = config.prefix, problem.history == "causal"
    key_valid = torch.from_numpy(np.asarray(problem.key_valid)).cuda()

    def mask_mod(b, h, q_idx, kv_idx):
        key_in_prefix = kv_idx < num_prefix
        prefix_row = (key_in_prefix & (kv_idx <= q_idx)) if causal else key_in_prefix
        candidate_row = key_in_prefix | (kv_idx == q_idx)
        return torch.where(q_idx < num_prefix, prefix_row, candidate_row) & key_valid[b, kv_idx]

    def tanh_cap(score, b, h, q_idx, kv_idx):
        # flex_attention hands score_mod the already scaled logit, as the cap expects.
        return LOGIT_CAP * torch.tanh(score / LOGIT_CAP)

    seq_len = config.seq_len
    block_mask = create_block_mask(mask_mod, config.batch, None, seq_len, seq_len, device="cuda")
    compiled = torch.compile(flex_attention)

    def attend(q, k, v):
        return compiled(
            q, k, v, score_mod=tanh_cap, block_mask=block_mask, scale=problem.scale, enable_gqa=True
        )

    return _torch_runner(attend, problem, backward)


def _sdpa_runner(problem: Problem, backward: bool) -> Runner:
    import torch
    import torch.nn.functional as F

    mask = torch.from_numpy(np.asarray(problem.dense_mask())).cuda()

    def attend(q, k, v):
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, scale=problem.scale, enable_gqa=True
        )

    return _torch_runner(attend, problem, backward)


def _needs_gpu() -> str | None:
    platform = jax.default_backend()
    return None if platform == "gpu" else f"needs an NVIDIA GPU (JAX runs on {platform})"


def _needs_hopper() -> str | None:
    return None if is_hopper_gpu() else f"needs a Hopper GPU (JAX runs on {jax.devices()[0]})"


def _needs_tokamax(implementation: str) -> str | None:
    if importlib.util.find_spec("tokamax") is None:
        return "tokamax is not installed"
    try:
        import tokamax  # noqa: F401  (it imports flax, qwix and xprof pieces that may be missing)
    except Exception as failure:
        return f"tokamax does not import: {type(failure).__name__}: {failure}"
    return _needs_hopper() if implementation == "mosaic" else _needs_gpu()


def _needs_torch_cuda() -> str | None:
    if importlib.util.find_spec("torch") is None:
        return "torch is not installed"
    import torch

    return None if torch.cuda.is_available() else "torch sees no CUDA device"


def _always_available() -> str | None:
    return None


@dataclasses.dataclass(frozen=True)
class Implementation:
    description: str
    # False for the peers that compute attention without the logit cap.
    capped: bool
    # Whether fwd+bwd is measured (the peers the benchmark bar times forward only are not).
    backward: bool
    unavailable: Callable[[], str | None]
    build: Callable[[Problem, bool], Runner]
    # The peer's own package, whose version the results file records.
    module: str | None = None


def implementations(interpret: bool) -> dict[str, Implementation]:
    return {
        "ours": Implementation(
            "phoenix_eqx Pallas (Mosaic GPU) kernel, structural mask + cap",
            capped=True,
            backward=True,
            unavailable=_always_available,
            build=_phoenix_runner("pallas", interpret),
        ),
        "xla": Implementation(
            "XLA, the seed's formulation (dense mask, einsum, f32 softmax)",
            capped=True,
            backward=True,
            unavailable=_always_available,
            build=_phoenix_runner("xla", False),
        ),
        "cudnn": Implementation(
            "jax.nn.dot_product_attention cuDNN, dense mask, no cap",
            capped=False,
            backward=True,
            unavailable=_needs_gpu,
            build=_cudnn_runner,
        ),
        "tokamax-mosaic": Implementation(
            "tokamax mosaic, dense mask + cap",
            capped=True,
            backward=True,
            unavailable=functools.partial(_needs_tokamax, "mosaic"),
            build=_tokamax_runner("mosaic"),
            module="tokamax",
        ),
        "tokamax-triton": Implementation(
            "tokamax triton, dense mask + cap",
            capped=True,
            backward=False,
            unavailable=functools.partial(_needs_tokamax, "triton"),
            build=_tokamax_runner("triton"),
            module="tokamax",
        ),
        "flex": Implementation(
            "torch flex_attention (compiled), block mask + cap",
            capped=True,
            backward=True,
            unavailable=_needs_torch_cuda,
            build=_flex_runner,
            module="torch",
        ),
        "sdpa": Implementation(
            "torch SDPA, dense mask, no cap",
            capped=False,
            backward=False,
            unavailable=_needs_torch_cuda,
            build=_sdpa_runner,
            module="torch",
        ),
    }


IMPLEMENTATION_NAMES = list(implementations(interpret=False))


class Reference:
    """The pure-JAX reference in f32 (highest matmul precision) on the bf16-valued inputs, run
    lazily and kept on the host: the output with and without the cap, and the gradients."""

    def __init__(self, problem: Problem):
        self._problem = problem.as_float32()

    def _compute(self, logit_cap: float | None, backward: bool) -> list[np.ndarray]:
        problem = self._problem
        attend = _ours_attend(problem, "xla", False, logit_cap)
        runner = _jax_runner(attend, problem.key_valid, problem, backward)
        with jax.default_matmul_precision("highest"):
            return runner.to_numpy(runner.run())

    @functools.cached_property
    def output(self) -> list[np.ndarray]:
        return self._compute(LOGIT_CAP, backward=False)

    @functools.cached_property
    def output_uncapped(self) -> list[np.ndarray]:
        return self._compute(None, backward=False)

    @functools.cached_property
    def gradients(self) -> list[np.ndarray]:
        return self._compute(LOGIT_CAP, backward=True)


def relative_error(actual: list[np.ndarray], expected: list[np.ndarray]) -> float:
    """The worst ||actual - expected|| / ||expected|| over the outputs; NaN when any output is
    non-finite (np.max, unlike max, propagates it)."""
    errors = [
        np.linalg.norm(a - e) / np.linalg.norm(e) for a, e in zip(actual, expected, strict=True)
    ]
    return float(np.max(errors))


def _failure(status: str, context: str, failure: Exception) -> dict:
    """A pass that was not timed: a one-line `detail` for the table, the full `message` for
    the results file."""
    message = f"{type(failure).__name__}: {failure}".strip()
    return {
        "status": status,
        "detail": (context + message.splitlines()[0])[:300],
        "message": message[:4000],
    }


def check_pass(
    implementation: Implementation, problem: Problem, reference: Reference, backward: bool
) -> tuple[Runner | None, dict]:
    """Build one implementation's pass (fwd, or fwd+bwd) and check it against the reference.

    Returns the runner and `{"status": "checked", "rel_error": ...}` when it is within the
    tolerance, else None and the failure (status "error" or "check failed")."""
    try:
        if backward:
            expected = reference.gradients
        else:
            expected = reference.output if implementation.capped else reference.output_uncapped
    except Exception as failure:
        return None, _failure("error", "reference: ", failure)
    try:
        runner = implementation.build(problem, backward)
        error = relative_error(runner.to_numpy(runner.run()), expected)
    except Exception as failure:  # Any failure of an implementation is its row's result.
        return None, _failure("error", "", failure)
    if not error <= TOLERANCE:
        detail = f"relative error {error:.3g} > {TOLERANCE:g}"
        return None, {
            "status": "check failed",
            "rel_error": _finite_or_none(error),
            "detail": detail,
        }
    return runner, {"status": "checked", "rel_error": error}


def time_pass(
    runner: Runner,
    problem: Problem,
    backward: bool,
    checked: dict,
    *,
    iters: int,
    warmup: int = 2,
    max_seconds: float | None = None,
) -> dict:
    """Time a checked pass (`device_time`): ms, useful TFLOP/s and how it was measured."""
    try:
        timing = device_time(
            runner.fn,
            *runner.args,
            framework=runner.framework,
            iters=iters,
            warmup=warmup,
            max_seconds=max_seconds,
        )
    except Exception as failure:
        return _failure("error", "while timing: ", failure)
    flops = problem.config.useful_flops(problem.history)
    flops *= FWD_BWD_FLOP_FACTOR if backward else 1.0
    return {
        "status": "ok",
        "ms": timing.ms,
        "tflops": flops / (timing.ms * 1e-3) / 1e12,
        "rel_error": checked["rel_error"],
        "timing": timing.as_dict(),
    }


def measure(
    implementation: Implementation,
    problem: Problem,
    reference: Reference,
    backward: bool,
    iters: int,
    warmup: int = 2,
    max_seconds: float | None = None,
) -> dict:
    """Check one implementation's pass (fwd, or fwd+bwd) against the reference, then time it."""
    runner, checked = check_pass(implementation, problem, reference, backward)
    if runner is None:
        return checked
    return time_pass(
        runner, problem, backward, checked, iters=iters, warmup=warmup, max_seconds=max_seconds
    )


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def cell(result: dict | None) -> str:
    if result is None:
        return "-"
    if result["status"] == "ok":
        # Whole TFLOP/s as docs/benchmarks.md prints them; small (CPU) rates keep 2 digits.
        tflops = result["tflops"]
        rate = f"{tflops:.0f}" if tflops >= 10 else f"{tflops:.2g}"
        ms = result["ms"]
        return f"{ms:.3g} ({rate})" if ms < 1000 else f"{ms:.0f} ({rate})"
    return result["status"]


def print_table(rows: list[dict]) -> None:
    header = f"{'config':<12}{'impl':<16}{'fwd ms (TFLOP/s)':>20}{'fwd+bwd ms (TFLOP/s)':>24}"
    print(header + f"{'max rel err':>14}")
    print("-" * (len(header) + 14))
    notes = []
    for row in rows:
        passes = {"fwd": row["fwd"], "fwd+bwd": row["fwd_bwd"]}
        errors = [r["rel_error"] for r in passes.values() if r and r.get("rel_error") is not None]
        error = f"{max(errors):.1e}" if errors else "-"
        print(
            f"{row['config']:<12}{row['impl']:<16}{cell(row['fwd']):>20}"
            f"{cell(row['fwd_bwd']):>24}{error:>14}"
        )
        notes += [
            f"  {row['config']} {row['impl']} {name}: {result['detail']}"
            for name, result in passes.items()
            if result and result["status"] != "ok"
        ]
    if notes:
        print("\nNot timed:")
        print("\n".join(notes))


def write_plot(path: Path, rows: list[dict], title: str) -> None:
    panels: dict[str, dict[str, dict[str, float]]] = {}
    for pass_name, key in (("forward", "fwd"), ("forward + backward", "fwd_bwd")):
        for row in rows:
            result = row[key]
            if result and result["status"] == "ok":
                series = panels.setdefault(pass_name, {}).setdefault(row["impl"], {})
                series[row["config"]] = result["tflops"]
    if not panels:
        print("plot: no timed rows, nothing to plot")
        return
    try:
        plot_grouped_bars(path, panels, ylabel="useful TFLOP/s", title=title)
    except ImportError:
        print("plot: matplotlib is not installed, skipped (pip install matplotlib)")
        return
    print(f"plot: {path}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.attention",
        description="Candidate-isolation attention: ours against XLA, cuDNN, tokamax and torch.",
    )
    parser.add_argument(
        "--configs", nargs="+", choices=list(ATTENTION_CONFIGS), default=list(ATTENTION_CONFIGS)
    )
    parser.add_argument(
        "--impls", nargs="+", choices=IMPLEMENTATION_NAMES, default=IMPLEMENTATION_NAMES
    )
    parser.add_argument("--history", choices=["causal", "bidirectional"], default="causal")
    parser.add_argument(
        "--pad-history",
        action="store_true",
        help="random history padding per batch row (key_valid false) instead of all valid",
    )
    parser.add_argument("--no-bwd", action="store_true", help="time the forward pass only")
    parser.add_argument(
        "--iters", type=int, default=20, help="calls timed back to back (device time per call)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="shrink every config to B=1, P=64, C=32"
    )
    parser.add_argument(
        "--interpret", action="store_true", help="run our kernel in the Pallas interpreter"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=Path("bench_results/attention.json"))
    parser.add_argument("--plot", type=Path, default=Path("bench_results/attention.png"))
    return parser.parse_args(argv)


def _peer_versions(selected: dict[str, Implementation]) -> dict[str, str]:
    modules = sorted({impl.module for impl in selected.values() if impl.module is not None})
    return {module: importlib.import_module(module).__version__ for module in modules}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if {"flex", "sdpa"} & set(args.impls):
        # JAX would otherwise take 75% of the GPU up front and leave torch too little.
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    metadata = run_metadata()
    available = implementations(args.interpret)
    selected, skipped = {}, {}
    for name in args.impls:
        reason = available[name].unavailable()
        if reason is None:
            selected[name] = available[name]
        else:
            skipped[name] = reason
            print(f"skip {name}: {reason}")
    print(f"{metadata['device']}, {metadata['date']}; history {args.history}", end="")
    print(", padded" if args.pad_history else "", end="")
    print(", quick shapes" if args.quick else "")

    rows = []
    for config_name in args.configs:
        config = ATTENTION_CONFIGS[config_name]
        config = quick_attention_config(config) if args.quick else config
        problem = make_problem(config, args.history, args.pad_history, args.seed)
        reference = Reference(problem)
        for name, implementation in selected.items():
            measure_pass = functools.partial(
                measure, implementation, problem, reference, iters=args.iters
            )
            fwd = measure_pass(backward=False)
            fwd_bwd = None
            if implementation.backward and not args.no_bwd:
                fwd_bwd = measure_pass(backward=True)
            print(f"{config_name} {name}: fwd {cell(fwd)}, fwd+bwd {cell(fwd_bwd)}", flush=True)
            rows.append(
                {
                    "config": config_name,
                    "impl": name,
                    "description": implementation.description,
                    **dataclasses.asdict(config),
                    "useful_gflop_fwd": config.useful_flops(args.history) / 1e9,
                    "fwd": fwd,
                    "fwd_bwd": fwd_bwd,
                }
            )
            if implementation.module == "torch":
                # Hand torch's cached blocks back before the next row or config needs them.
                import torch

                torch.cuda.empty_cache()
        # Free this config's inputs and reference before the next one allocates its own.
        del problem, reference

    print()
    print_table(rows)
    settings = {
        "history": args.history,
        "pad_history": args.pad_history,
        "quick": args.quick,
        "interpret": args.interpret,
        "iters": args.iters,
        "dtype": "bfloat16",
        "logit_cap": LOGIT_CAP,
        "tolerance": TOLERANCE,
        "fwd_bwd_flop_factor": FWD_BWD_FLOP_FACTOR,
    }
    payload = {
        "benchmark": "candidate_attention",
        **metadata,
        "peer_versions": _peer_versions(selected),
        "settings": settings,
        "skipped": skipped,
        "rows": rows,
    }
    write_json(args.json, payload)
    print(f"\njson: {args.json}")
    title = f"candidate attention, {metadata['device']}, {metadata['date'][:10]}"
    write_plot(args.plot, rows, title)


if __name__ == "__main__":
    main()
