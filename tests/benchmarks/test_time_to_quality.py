"""`benchmarks.time_to_quality` reads `recommender_validation` results, orders them by fit time
and plots them; a file without a result is refused by name."""

import json

import pytest

from benchmarks import time_to_quality


def result_file(path, wall_s, retrieval, both):
    validation = {"retrieval": {"hr@10": retrieval, "ndcg@10": 0.0}}
    if both is not None:
        validation["ranker"] = {"hr@10": both, "ndcg@10": 0.0}
    history = [[wall_s / 2, "retrieval", 1, retrieval / 2], [wall_s, "ranker", 1, both or 0.0]]
    path.write_text(
        '{"options": {}}\n'
        + json.dumps({"wall_s": wall_s, "validation": validation, "history": history})
        + "\n"
    )
    return str(path)


def test_points_are_ordered_by_fit_time_and_plotted(tmp_path, capsys):
    files = [
        result_file(tmp_path / "b600.txt", 600.0, 0.27, 0.28),
        result_file(tmp_path / "b300.txt", 300.0, 0.20, None),
    ]
    plot = tmp_path / "curve.png"
    time_to_quality.main([*files, "--plot", str(plot)])
    printed = capsys.readouterr().out.splitlines()
    assert printed == [
        "   5.0 min: retrieval 0.2000, both -",
        "  10.0 min: retrieval 0.2700, both 0.2800",
    ]
    assert plot.stat().st_size > 0


def test_a_file_without_a_result_is_named(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty.txt: expected a recommender_validation output"):
        time_to_quality.read_result(str(empty))
