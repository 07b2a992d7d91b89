"""`benchmarks.scaling` runs end to end at a tiny size (one subprocess, a short fit) and
reports every figure; the planted-walk generator keeps its contract."""

import json

import numpy as np

from benchmarks import scaling
from phoenix_eqx.data.synthetic import planted_walks


def test_planted_walks_are_time_ordered_walks_over_every_item_id():
    users, items, timestamps = planted_walks(7, 30, 100, follow=1.0, seed=1)
    assert users.shape == items.shape == timestamps.shape == (100,)
    assert np.bincount(users).tolist() == [15, 15, 14, 14, 14, 14, 14]
    assert items.min() >= 1 and items.max() <= 30
    assert (timestamps[users == 3] == np.arange(14)).all()
    # follow=1: each user's walk steps along one cycle, so each item has one successor.
    successors: dict[int, int] = {}
    for user in range(7):
        walk = items[users == user]
        for item, following in zip(walk[:-1], walk[1:], strict=True):
            assert successors.setdefault(int(item), int(following)) == following


def test_the_benchmark_reports_every_figure_at_a_tiny_size(tmp_path, capsys):
    out = tmp_path / "results.json"
    scaling.main(
        ["--sizes", "60:600", "--users", "30", "--budget", "1", "--calls", "3"]
        + ["--json", str(out)]
    )
    (result,) = json.loads(out.read_text())
    for name, _ in scaling.COLUMNS:
        assert name in result
    assert result["first_step_s"] <= result["fit_s"]
    assert result["recommend_p50_ms"] > 0 and result["batch_users_per_s"] > 0
    assert 0 <= result["hr10_fit"] <= 1 and result["model_mb"] > 0
    assert "| 60 | 600 |" in capsys.readouterr().out
