"""The prepared GPU session's dry run: its whole code path on the CPU, kernels interpreted.

`python -m benchmarks.gpu_session --dry-run` runs every section of the GPU session at tiny
shapes (the Mosaic GPU kernels in the interpreter, one call timed per item) and writes the JSON
the GPU run writes. This checks that JSON's structure, that every correctness check ran and
passed, and that the peers this machine lacks are reported as skipped with a reason.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks.gpu_session import ATTENTION_PEERS, SECTIONS, TOPK_OURS, make_plan
from benchmarks.timing import device_time

# `benchmarks` is not installed: `python -m benchmarks...` runs from the repository root.
REPOSITORY = Path(__file__).resolve().parents[2]


def test_device_time_times_back_to_back_calls():
    step = jax.jit(lambda x: x * 2)
    timing = device_time(step, jnp.ones(8), iters=5, warmup=1)
    expected = "cupti" if jax.default_backend() == "gpu" else "back-to-back"
    assert timing.method == expected and timing.iters == 5
    assert timing.ms > 0 and timing.span_ms > 0
    assert set(timing.as_dict()) == {"ms", "method", "iters", "span_ms", "kernels", "note"}
    # A closure over arrays would make them constants of the compiled step: refused.
    with pytest.raises(TypeError, match="jax.jit"):
        device_time(lambda x: x * 2, jnp.ones(8))


def test_device_time_times_fewer_calls_of_a_slow_step():
    def slow(x):
        time.sleep(0.05)
        return np.asarray(x)

    step = jax.jit(lambda x: jax.pure_callback(slow, jax.ShapeDtypeStruct(x.shape, x.dtype), x))
    timing = device_time(step, jnp.ones(4), iters=20, warmup=1, max_seconds=0.1)
    assert timing.iters == 2
    assert timing.span_ms >= 50


def test_plan_runs_the_chosen_sections_in_their_order():
    assert make_plan("full", None, None).sections == SECTIONS
    assert make_plan("quick", 60.0, None, ("topk", "attention")).sections == ("attention", "topk")
    for wrong in (("top-k",), ()):
        with pytest.raises(ValueError, match="sections: expected some of"):
            make_plan("full", None, None, wrong)


def test_dry_run_checks_times_and_writes_one_json(tmp_path):
    # The command itself, in a fresh process (as CI and the device machine run it).
    path = tmp_path / "session.json"
    command = [sys.executable, "-m", "benchmarks.gpu_session", "--dry-run", "--json", str(path)]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=600, cwd=REPOSITORY
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    printed = done.stdout
    session = json.loads(path.read_text())

    assert session["mode"] == "dry-run" and session["kernels_interpreted"] is True
    assert session["jax_version"] and session["device"] and session["date"]
    assert session["sections_done"] == ["ceilings", "attention", "top-k", "end to end"]
    assert session["plan"]["sections"] == ["attention", "topk", "e2e"]
    ceilings = session["ceilings"]
    assert ceilings["copy_bytes_per_s"] > 0 and ceilings["matmul_flop_per_s"] > 0

    # Correctness first: both kernels, the cached-candidate op and the end-to-end paths.
    names = [check["name"] for check in session["checks"]]
    for expected in (
        "attention tiny output",
        "attention tiny gradients",
        "cached attention tiny output",
        "cached attention tiny gradients",
        "top-k 2 x 512, k=10",
        "end to end ranker kernels",
        "end to end ranker kernels prefix-cache",
        "end to end retrieval kernels",
    ):
        assert expected in names, names
    for check in session["checks"]:
        assert check["passed"] is True, check
        if not check["name"].startswith("end to end"):
            assert check["seconds"] > 0, check
    assert session["checks_passed"] is True
    for check in session["checks"]:
        if "rel_error" in check:
            assert 0 < check["rel_error"] <= check["tolerance"], check

    # Attention: ours and XLA timed, fwd and fwd+bwd; the GPU-only peers skipped with a reason.
    rows = {row["impl"]: row for row in session["attention"]["rows"]}
    assert set(rows) == {"ours", "xla", *ATTENTION_PEERS}
    for impl in ("ours", "xla"):
        for result in (rows[impl]["fwd"], rows[impl]["fwd_bwd"]):
            assert result["status"] == "ok", result
            assert result["ms"] > 0 and result["tflops"] > 0 and result["of_matmul"] > 0
            assert result["timing"]["method"] == "back-to-back"
    for peer in ATTENTION_PEERS:
        assert rows[peer]["fwd"]["status"] == "skipped" and rows[peer]["fwd"]["detail"]
    assert session["skipped_peers"].keys() >= {*ATTENTION_PEERS, "torch"}

    # Top-k: ours, auto and XLA timed against the floor of the measured ceilings.
    (topk,) = session["topk"]["rows"]
    for impl in TOPK_OURS:
        result = topk["impls"][impl]
        assert result["status"] == "ok", result
        assert result["ms"] > 0 and result["x_floor"] > 0
    assert topk["impls"]["pallas"]["check"]["ok"] is True
    assert topk["impls"]["torch"]["status"] == "skipped"

    # End to end: every path checked against an independent one, then timed.
    e2e = {row["job"]: row for row in session["e2e"]["rows"]}
    assert set(e2e) == {
        "ranker xla",
        "ranker kernels",
        "ranker kernels prefix-cache",
        "retrieval xla",
        "retrieval kernels",
    }
    assert e2e["ranker kernels"]["candidates_per_s"] > 0
    assert e2e["retrieval kernels"]["users_per_s"] > 0
    assert e2e["retrieval kernels"]["top_k_overlap_vs_numpy_sort"] == 1.0

    # The tables come last on stdout.
    assert "checks: " in printed and "top-k: ms" in printed and "ranker kernels" in printed
