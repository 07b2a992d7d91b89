"""The end-to-end benchmark command runs, checks every path against an independent one, and
writes its results.

On the CPU the kernel path runs the Pallas kernels in Mosaic GPU's interpreter (the command does
that itself off a Hopper GPU), so its ranker probabilities are compared with the pure-XLA
path's (two different attention implementations), and every retrieval path's top-k with a
NumPy full sort of its own users' scores against the corpus.
"""

import json

from benchmarks.e2e import PROBABILITY_TOLERANCE, main


def test_quick_run_checks_every_path_against_an_independent_one(tmp_path):
    output = tmp_path / "e2e.json"
    assert main(["--quick", "--json", str(output)]) == 0
    result = json.loads(output.read_text())
    assert result["kernel_implementation"] == "pallas"
    rows = {row["job"]: row for row in result["rows"]}
    assert set(rows) == {
        "ranker xla",
        "ranker kernels",
        "ranker kernels prefix-cache",
        "retrieval xla",
        "retrieval kernels",
    }
    for row in rows.values():
        assert row["agree"] is True, row
        assert row["ms"] > 0 and row["timing"]["iters"] >= 1
    # The kernel paths against the XLA path: close, and not identical (another implementation).
    for job in ("ranker kernels", "ranker kernels prefix-cache"):
        diff = rows[job]["max_abs_probability_diff_vs_xla"]
        assert 0 < diff <= PROBABILITY_TOLERANCE, (job, diff)
    assert 0 < rows["retrieval kernels"]["max_abs_user_diff_vs_xla"]
    # Each retrieval path's top-k against a NumPy full sort of its users' scores.
    for job in ("retrieval xla", "retrieval kernels"):
        assert rows[job]["top_k_overlap_vs_numpy_sort"] == 1.0, rows[job]
        assert rows[job]["max_abs_score_diff_vs_numpy_sort"] < 1e-3, rows[job]
