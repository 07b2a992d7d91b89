"""benchmarks.report: the published rows beside a train report, and its validation plot."""

import io
import json
import sys

from rich.console import Console

from benchmarks import report as report_module
from phoenix_eqx.protocol import MODES
from phoenix_eqx.train import metric_columns


def _report(dataset: str) -> dict:
    metrics = {column: 0.1 for column in metric_columns()}
    return {
        "dataset": dataset,
        "results": {"Phoenix retrieval alone": {"test": {mode: metrics for mode in MODES}}},
        "validation_history": [
            {"seconds": 1.0, "stage": "retrieval", "epoch": 1, "hr@10": 0.1},
            {"seconds": 2.0, "stage": "retrieval", "epoch": 2, "hr@10": 0.2},
        ],
    }


def test_published_rows_are_movielens_1m_only_and_say_they_were_not_measured(tmp_path):
    for dataset, shown in (("movielens-1m", True), ("movielens-100k", False)):
        path = tmp_path / f"{dataset}.json"
        path.write_text(json.dumps(_report(dataset)))
        output = io.StringIO()
        report_module.main([str(path)], Console(file=output, width=300))
        text = output.getvalue()
        assert ("HSTU-large (published)" in text) is shown
        assert ("not measured here" in text) is shown
        assert "Phoenix retrieval alone" in text
    assert report_module.published_rows("movielens-100k") == {}


def test_the_validation_plot_is_written(tmp_path):
    path = tmp_path / "report.json"
    path.write_text(json.dumps(_report("synthetic")))
    png = tmp_path / "curve.png"
    output = io.StringIO()
    report_module.main([str(path), "--plot", str(png)], Console(file=output, width=300))
    assert png.exists() or "matplotlib is not installed" in output.getvalue()


def test_the_matplotlib_hint_keeps_its_brackets(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails
    output = io.StringIO()
    history = _report("synthetic")["validation_history"]
    report_module.plot_validation(tmp_path / "curve.png", history, Console(file=output, width=200))
    assert "pip install 'phoenix-eqx[plot]'" in output.getvalue()
