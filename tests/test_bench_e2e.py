"""The end-to-end benchmark command runs, cross-checks its paths and writes its results."""

import json

from phoenix_eqx.bench_e2e import main


def test_quick_run_checks_every_path_and_writes_json(tmp_path):
    output = tmp_path / "e2e.json"
    assert main(["--quick", "--iters", "2", "--warmup", "1", "--json", str(output)]) == 0
    result = json.loads(output.read_text())
    rows = result["rows"]
    assert {row["job"] for row in rows} >= {"ranker xla", "ranker auto", "retrieval xla"}
    for row in rows:
        assert row["agree"] is True
        assert row["ms"] > 0
