"""Shared pieces of the kernel microbenchmarks: timing, memory, results files, plots."""

import datetime
import json
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import jax


def time_ms(fn: Callable, *args, warmup: int = 3, iters: int = 20) -> float:
    """Median wall time of `fn(*args)` in milliseconds, synchronising on its outputs."""
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    samples = []
    for _ in range(iters):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


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


def median_ms(
    run: Callable[[], object],
    wait: Callable[[object], object],
    *,
    warmup: int = 3,
    iters: int = 20,
) -> float:
    """Median wall time of `run()` in milliseconds; `wait(outputs)` blocks until they are ready.

    The framework-neutral form of `time_ms`: pass `jax.block_until_ready`, or a wait that calls
    `torch.cuda.synchronize()`, so that peers from either framework are timed the same way.
    """
    for _ in range(warmup):
        wait(run())
    samples = []
    for _ in range(iters):
        start = time.perf_counter()
        wait(run())
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


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
