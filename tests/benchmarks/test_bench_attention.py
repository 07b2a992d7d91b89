"""Smoke test of the candidate-attention benchmark harness at its quick CPU shapes."""

import json
import math

from benchmarks.attention import main


def test_quick_run_checks_times_and_writes_results(tmp_path):
    results = tmp_path / "attention.json"
    main(
        [
            "--quick",
            "--configs",
            "prod-serve",
            "--impls",
            "xla",
            "--pad-history",
            "--iters",
            "3",
            "--json",
            str(results),
            "--plot",
            str(tmp_path / "attention.png"),
        ]
    )
    payload = json.loads(results.read_text())
    assert payload["jax_version"] and payload["device"] and payload["date"]
    assert [(row["config"], row["impl"]) for row in payload["rows"]] == [("prod-serve", "xla")]
    for row in payload["rows"]:
        for result in (row["fwd"], row["fwd_bwd"]):
            assert result["status"] == "ok", result
            assert math.isfinite(result["ms"]) and result["ms"] > 0
            assert math.isfinite(result["tflops"]) and result["tflops"] > 0
            assert 0 < result["rel_error"] <= payload["settings"]["tolerance"]


def test_failing_implementation_is_reported_not_raised(tmp_path):
    # Without the interpreter our Mosaic GPU kernel cannot run on the CPU (or is not written
    # yet): the harness must record the error for that row and still finish the run.
    results = tmp_path / "attention.json"
    main(
        [
            "--quick",
            "--configs",
            "rank-wide",
            "--impls",
            "ours",
            "xla",
            "--no-bwd",
            "--iters",
            "2",
            "--json",
            str(results),
            "--plot",
            str(tmp_path / "attention.png"),
        ]
    )
    rows = {row["impl"]: row for row in json.loads(results.read_text())["rows"]}
    assert rows["xla"]["fwd"]["status"] == "ok"
    assert rows["xla"]["fwd_bwd"] is None
    if rows["ours"]["fwd"]["status"] != "ok":
        assert rows["ours"]["fwd"]["status"] in ("error", "check failed")
        assert rows["ours"]["fwd"]["detail"]
