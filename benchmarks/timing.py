"""The benchmarks' shared pieces: device timing, memory, results files, plots.

`device_time` is the one timing helper of every benchmark here (kernels, end to end, the GPU
session). It never times one synchronous call: it dispatches many calls back to back and waits
once, so host dispatch overlaps device work, and on a GPU it reads device time itself.
"""

import contextlib
import dataclasses
import datetime
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Literal

import jax

Framework = Literal["jax", "torch"]
# Per-kernel CUPTI times kept in a Timing (a whole model launches hundreds).
MAX_KERNELS_KEPT = 24


@dataclasses.dataclass(frozen=True)
class Timing:
    """Time of one call of a step, measured over `iters` calls dispatched back to back.

    `ms` is the figure to report, by `method`:
    - `"cupti"` (JAX on a GPU): median over the calls of the summed CUPTI kernel times of one
      call (`jax.experimental.mosaic.gpu.profiler.measure`); `kernels` splits it by kernel;
    - `"cuda-events"` (torch on a GPU): CUDA events around the back-to-back calls, divided;
    - `"back-to-back"` (no GPU, or CUPTI failed: `note` says why): the host clock around the
      back-to-back calls and one wait at the end, divided.
    `span_ms` is always that last figure. On a GPU it is the device's busy time plus the gaps
    between kernels (and host time, where the host cannot keep ahead of the device).
    """

    ms: float
    method: str
    iters: int
    span_ms: float
    kernels: tuple[tuple[str, float], ...] = ()
    note: str | None = None

    def as_dict(self) -> dict:
        payload = dataclasses.asdict(self)
        payload["kernels"] = [list(kernel) for kernel in self.kernels]
        return payload


def _on_gpu() -> bool:
    return jax.default_backend() == "gpu"


def device_time(
    fn: Callable,
    *args,
    framework: Framework = "jax",
    iters: int = 20,
    warmup: int = 2,
    max_seconds: float | None = None,
) -> Timing:
    """Per-call time of `fn(*args)`; see `Timing` for what is measured where.

    JAX: `fn` must be a `jax.jit` function taking its arrays as `args` (CUPTI calls it as
    is; a closure over arrays would make them compile-time constants). torch: any callable on
    CUDA tensors. `warmup` calls, each waited for, come first (compilation, autotuning); with
    `max_seconds`, the number of timed calls shrinks so that one pass takes about that long
    (at least 2 calls), judged from the last warm-up call. Exceptions from `fn` propagate.
    """
    if framework not in ("jax", "torch"):
        raise ValueError(f"framework: expected 'jax' or 'torch', got {framework!r}")
    if iters < 1 or warmup < 0:
        raise ValueError(f"iters, warmup: expected >= 1 and >= 0, got {iters}, {warmup}")
    if framework == "jax" and not hasattr(fn, "lower"):
        raise TypeError("fn: expected a jax.jit function with its arrays passed as args")
    torch_cuda = framework == "torch" and _torch_cuda()
    if torch_cuda:
        import torch

        def wait(outputs):
            torch.cuda.synchronize()
    elif framework == "torch":

        def wait(outputs):
            return outputs
    else:
        wait = jax.block_until_ready

    per_call_s = None
    for _ in range(warmup):
        start = time.perf_counter()
        wait(fn(*args))
        per_call_s = time.perf_counter() - start
    if max_seconds is not None and per_call_s:
        iters = max(min(iters, 2), min(iters, int(max_seconds / per_call_s)))

    if torch_cuda:
        begin, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
        torch.cuda.synchronize()
        start = time.perf_counter()
        begin.record()
        for _ in range(iters):
            fn(*args)
        end.record()
        end.synchronize()
        span_ms = (time.perf_counter() - start) * 1e3 / iters
        return Timing(begin.elapsed_time(end) / iters, "cuda-events", iters, span_ms)

    span_ms = _back_to_back_ms(fn, args, wait, iters)
    if framework == "jax" and _on_gpu():
        try:
            ms, kernels = _cupti_ms(fn, args, iters)
        except Exception as failure:  # noqa: BLE001 - fall back, and say why
            note = f"CUPTI failed ({type(failure).__name__}: {str(failure)[:200]})"
            return Timing(span_ms, "back-to-back", iters, span_ms, note=note)
        if ms is None:
            note = "CUPTI saw no kernel launch"
            return Timing(span_ms, "back-to-back", iters, span_ms, note=note)
        return Timing(ms, "cupti", iters, span_ms, kernels)
    return Timing(span_ms, "back-to-back", iters, span_ms)


def _torch_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _back_to_back_ms(fn: Callable, args: tuple, wait: Callable, iters: int) -> float:
    """`iters` calls dispatched without waiting, one wait on the last: host ms per call."""
    start = time.perf_counter()
    for _ in range(iters):
        outputs = fn(*args)
    wait(outputs)
    return (time.perf_counter() - start) * 1e3 / iters


def _cupti_ms(fn: Callable, args: tuple, iters: int):
    """Median summed CUPTI kernel time of one call, and each kernel's median (None: no kernel)."""
    from jax.experimental.mosaic.gpu import profiler

    _, timings = profiler.measure(fn, aggregate=False, iterations=iters)(*args)
    if not timings:
        return None, ()
    if iters == 1:  # measure returns one call's list of kernels, not a list of calls
        timings = [timings]
    totals = [sum(ms for _, ms in call) for call in timings]
    kernels = [
        (name, statistics.median(call[index][1] for call in timings))
        for index, (name, _) in enumerate(timings[0])
    ]
    if len(kernels) > MAX_KERNELS_KEPT:  # a whole model: keep the longest, in launch order
        cut = sorted(ms for _, ms in kernels)[-MAX_KERNELS_KEPT]
        kernels = [kernel for kernel in kernels if kernel[1] >= cut][:MAX_KERNELS_KEPT]
    return statistics.median(totals), tuple(kernels)


@contextlib.contextmanager
def kernel_mode(interpret: bool) -> Iterator[None]:
    """A context in which every Mosaic GPU kernel runs in the CPU interpreter (`interpret`),
    or a no-op: callers pass `implementation="pallas"` and `interpret=False` either way, so a
    CPU dry run takes the code path of the GPU run.

    Interpreting is for smoke runs, whose timings mean nothing: XLA is also told to skip most
    optimisations there, which halves the compile time of a small model on the CPU.
    """
    if not interpret:
        yield
        return
    # The interpreter imports the Pallas fuser on its first run, which registers a config
    # option that is part of every jit cache key: everything compiled before would compile
    # again once. Importing it first keeps the keys stable.
    import jax.experimental.pallas.fuser  # noqa: F401
    from jax.experimental.pallas import mosaic_gpu as plgpu

    optimize = "jax_disable_most_optimizations"
    previous = jax.config.values[optimize]
    jax.config.update(optimize, True)
    try:
        with plgpu.force_gpu_interpret_mode(plgpu.InterpretGPUParams()):
            yield
    finally:
        jax.config.update(optimize, previous)


def peak_memory_bytes() -> int | None:
    """Peak bytes in use on the default device since start-up, where the backend reports it."""
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def device_description() -> str:
    device = jax.devices()[0]
    return f"{device.device_kind} ({device.platform}), jax {jax.__version__}"


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2))


def run_metadata() -> dict[str, str]:
    """Where and when a benchmark ran, for the head of its results file."""
    device = jax.devices()[0]
    return {
        "device": device_description(),
        "device_kind": device.device_kind,
        "platform": device.platform,
        "jax_version": jax.__version__,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def plot_grouped_bars(
    path: Path,
    panels: Mapping[str, Mapping[str, Mapping[str, float]]],
    *,
    ylabel: str,
    title: str,
) -> None:
    """Save a PNG of side-by-side bar charts, `panels[panel][series][group] = value`.

    Groups (e.g. configs) lie along each x axis with one bar per series (e.g. implementation);
    a series keeps its colour across panels and a missing value leaves a gap. Needs matplotlib
    (raises ImportError without it); uses no pyplot state, so it is safe in any process.
    """
    from matplotlib.figure import Figure

    all_series = list(dict.fromkeys(name for bars in panels.values() for name in bars))
    figure = Figure(figsize=(6.5 * len(panels), 4.5), layout="constrained")
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for axis, (panel_title, bars) in zip(axes, panels.items(), strict=True):
        groups = list(dict.fromkeys(group for values in bars.values() for group in values))
        width = 0.8 / len(bars)
        for index, (series, values) in enumerate(bars.items()):
            offset = (index - (len(bars) - 1) / 2) * width
            positions = [groups.index(group) + offset for group in values]
            color = f"C{all_series.index(series) % 10}"
            axis.bar(positions, list(values.values()), width, label=series, color=color)
        axis.set_xticks(range(len(groups)), groups)
        axis.set_title(panel_title)
        axis.set_ylabel(ylabel)
        axis.legend(fontsize="small")
    figure.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)


def print_report_of(main: Callable[[Path], dict]) -> None:
    """Print, as JSON, `main(directory)`'s report: the directory is the command's first
    argument, or a temporary one (removed afterwards)."""
    if len(sys.argv) > 1:
        print(json.dumps(main(Path(sys.argv[1])), indent=2))
        return
    with tempfile.TemporaryDirectory() as directory:
        print(json.dumps(main(Path(directory)), indent=2))
