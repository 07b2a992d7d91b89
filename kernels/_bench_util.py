"""Shared pieces of the kernel microbenchmarks: timing, memory, results files."""

import json
import statistics
import time
from collections.abc import Callable
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
