"""MovieLens-100K loader, on tiny fabricated files in both formats (never the real data)."""

import zipfile

import numpy as np
import pytest

from phoenix_eqx.config import ACTIONS
from phoenix_eqx.data import (
    GENRES,
    RankingStream,
    RetrievalStream,
    eval_users_batch,
    leave_last_out,
    load_movielens_100k,
    movie_catalog,
    movielens,
    rating_actions,
    recbole_wheel_path,
    side_features,
)

# user, item, rating, timestamp; user 3 has a single rating (no test item).
RATINGS = [
    (1, 2, 5, 300),
    (1, 1, 3, 100),
    (1, 3, 1, 200),
    (2, 3, 4, 50),
    (2, 1, 2, 60),
    (3, 2, 4, 10),
]
ITEMS = {  # id: (title, date, genres)
    1: ("Toy Story (1995)", "01-Jan-1995", ["Animation", "Children's", "Comedy"]),
    2: ("Heat (1995)", "15-Dec-1995", ["Action", "Crime", "Thriller"]),
    3: ("Old Film (1931)", "", ["Drama"]),
}
USERS = {1: (24, "M", "technician"), 2: (53, "F", "other"), 3: (23, "M", "writer")}


def _standard_files() -> dict[str, str]:
    data = "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in RATINGS)
    item_lines = []
    for item, (title, date, genres) in ITEMS.items():
        flags = "|".join("1" if g in genres else "0" for g in GENRES)
        item_lines.append(f"{item}|{title}|{date}||http://example.org|{flags}\n")
    users = "".join(f"{u}|{a}|{g}|{o}|00000\n" for u, (a, g, o) in USERS.items())
    return {"u.data": data, "u.item": "".join(item_lines), "u.user": users}


def _atomic_files() -> dict[str, str]:
    inter = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    inter += "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in RATINGS)
    item = "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
    for item_id, (title, date, genres) in ITEMS.items():
        year = date[-4:] if date else ""
        item += f"{item_id}\t{title[:-7]}\t{year}\t{' '.join(genres)}\n"
    user = "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
    user += "".join(f"{u}\t{a}\t{g}\t{o}\t00000\n" for u, (a, g, o) in USERS.items())
    return {"ml-100k.inter": inter, "ml-100k.item": item, "ml-100k.user": user}


@pytest.fixture
def standard_dir(tmp_path):
    for name, text in _standard_files().items():
        (tmp_path / name).write_text(text, encoding="latin-1")
    return tmp_path


@pytest.fixture
def fake_wheel(tmp_path):
    """A zip laid out like the recbole wheel."""
    wheel = movielens.WHEELS["ml-100k"]
    path = tmp_path / wheel.filename
    with zipfile.ZipFile(path, "w") as archive:
        for name, text in _atomic_files().items():
            archive.writestr(wheel.prefix + name, text)
        archive.writestr("recbole/__init__.py", "")
    return path


def _check_mapping(data):
    assert (data.num_users, data.num_items, data.num_interactions) == (3, 3, 6)
    np.testing.assert_array_equal(data.user_hashes[1:, 0], [1, 2, 3])
    np.testing.assert_array_equal(data.post_hashes[1:, 0], [1, 2, 3])
    # Demographic buckets (gender x occupation) live after the user ids, distinct per user.
    assert np.all(data.user_hashes[1:, 1] > data.num_users)
    assert len(set(data.user_hashes[1:, 1])) == 3
    # First genre -> author hash 0 and product surface; second genre -> author hash 1.
    animation, children, action, crime, drama = (
        GENRES.index(g) for g in ("Animation", "Children's", "Action", "Crime", "Drama")
    )
    np.testing.assert_array_equal(data.author_hashes[1:, 0], [animation + 1, action + 1, drama + 1])
    np.testing.assert_array_equal(data.author_hashes[1:, 1], [children + 1, crime + 1, 0])
    np.testing.assert_array_equal(data.item_surface[1:], [animation, action, drama])
    # Release decades: 1990s for both 1995 films; unknown date -> padding hash.
    assert data.post_hashes[1, 1] == data.post_hashes[2, 1] > data.num_items
    assert data.post_hashes[3, 1] == 0
    assert data.num_surfaces == len(GENRES)
    for table, rows in (
        (data.user_hashes, data.num_user_rows),
        (data.post_hashes, data.num_post_rows),
        (data.author_hashes, data.num_author_rows),
    ):
        assert table.max() < rows


def test_standard_files_in_a_directory(standard_dir):
    _check_mapping(load_movielens_100k(standard_dir))


def test_standard_files_in_a_zip(standard_dir, tmp_path):
    path = tmp_path / "ml-100k.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for name in ("u.data", "u.item", "u.user"):
            archive.write(standard_dir / name, f"ml-100k/{name}")
    _check_mapping(load_movielens_100k(path))


def test_recbole_atomic_files_in_the_wheel(fake_wheel):
    _check_mapping(load_movielens_100k(fake_wheel))


def test_both_formats_give_the_same_data(standard_dir, fake_wheel):
    a, b = load_movielens_100k(standard_dir), load_movielens_100k(fake_wheel)
    for field in ("users", "items", "ratings", "timestamps", "post_hashes", "author_hashes"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))


def test_both_formats_give_the_same_catalog(standard_dir, fake_wheel):
    catalog, atomic = movie_catalog("ml-100k", standard_dir), movie_catalog("ml-100k", fake_wheel)
    assert catalog.titles == atomic.titles and catalog.genres == atomic.genres
    np.testing.assert_array_equal(catalog.years, atomic.years)
    assert catalog.titles == ("", "Toy Story", "Heat", "Old Film")
    np.testing.assert_array_equal(catalog.years, [0, 1995, 1995, 0])
    assert catalog.genres[2] == ("Action", "Crime", "Thriller")
    assert catalog.describe(1) == "Toy Story (1995)" and catalog.describe(3) == "Old Film"


def test_side_features_are_the_same_in_both_formats(standard_dir, fake_wheel):
    items, users = side_features("ml-100k", standard_dir)
    assert items == {
        "genres": {1: "Animation|Children's|Comedy", 2: "Action|Crime|Thriller", 3: "Drama"},
        "year": {1: 1995, 2: 1995},  # the old film's date is unknown
    }
    assert users == {
        "age": {1: "24", 2: "53", 3: "23"},
        "gender": {1: "M", 2: "F", 3: "M"},
        "occupation": {1: "technician", 2: "other", 3: "writer"},
    }
    assert side_features("ml-100k", fake_wheel) == (items, users)


def test_the_cached_wheel_is_used_without_network(fake_wheel, monkeypatch):
    monkeypatch.setenv(movielens.CACHE_ENV, str(fake_wheel.parent))

    def no_network(*args, **kwargs):
        raise AssertionError("pip must not run when the wheel is cached")

    monkeypatch.setattr(movielens.subprocess, "run", no_network)
    assert recbole_wheel_path() == fake_wheel
    _check_mapping(load_movielens_100k())


def test_missing_wheel_without_download_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="recbole"):
        recbole_wheel_path(tmp_path, download=False)


def test_download_runs_pip_download_into_the_cache(tmp_path, monkeypatch):
    calls = []

    def fake_pip(command, **kwargs):
        calls.append(command)
        (tmp_path / movielens.WHEELS["ml-100k"].filename).write_bytes(b"")

        class Done:
            returncode, stderr = 0, ""

        return Done()

    monkeypatch.setattr(movielens.subprocess, "run", fake_pip)
    assert recbole_wheel_path(tmp_path) == tmp_path / movielens.WHEELS["ml-100k"].filename
    (command,) = calls
    assert command[1:4] == ["-m", "pip", "download"] and "--no-deps" in command
    assert "recbole==1.2.1" in command and command[-2:] == ["-d", str(tmp_path)]


def test_a_source_without_ratings_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="u.data or ml-100k.inter"):
        load_movielens_100k(tmp_path)


def test_rating_actions():
    actions = rating_actions(np.array([1.0, 3.0, 4.0, 5.0]))
    column = {name: actions[:, ACTIONS.index(name)] for name in ACTIONS}
    np.testing.assert_array_equal(column["click_score"], [1, 1, 1, 1])
    np.testing.assert_array_equal(column["favorite_score"], [0, 0, 1, 1])
    np.testing.assert_array_equal(column["repost_score"], [0, 0, 0, 1])
    np.testing.assert_array_equal(column["not_interested_score"], [1, 0, 0, 0])
    assert actions.shape == (4, len(ACTIONS))


def test_leave_last_out_orders_by_time(standard_dir):
    split = leave_last_out(load_movielens_100k(standard_dir))
    np.testing.assert_array_equal(split.items[1, :3], [1, 3, 2])  # by timestamp
    np.testing.assert_array_equal(split.test_items, [0, 2, 1, 0])
    np.testing.assert_array_equal(split.test_users, [1, 2])
    np.testing.assert_array_equal(split.train_lengths, [0, 2, 1, 0])
    # Training examples need an item before them: user 1 predicts position 1 only.
    np.testing.assert_array_equal(split.train_examples(), [[1, 1]])
    matrix = split.train_matrix()
    assert matrix[1, 1] and matrix[1, 3] and not matrix[1, 2]  # the test item is held out
    assert not matrix[3].any()


def test_batches_carry_history_and_features(standard_dir):
    data = load_movielens_100k(standard_dir)
    split = leave_last_out(data)
    batch = eval_users_batch(split, np.array([1, 2]), history_seq_len=3)
    # Right-aligned history, padding first: user 1 saw items 1 then 3.
    np.testing.assert_array_equal(batch.history_post_hashes[0, :, 0], [0, 1, 3])
    np.testing.assert_array_equal(batch.history_post_hashes[1, :, 0], [0, 0, 3])
    np.testing.assert_array_equal(batch.history_author_hashes[0, 1], data.author_hashes[1])
    assert batch.history_actions[0, 2, ACTIONS.index("not_interested_score")] == 1.0
    assert float(batch.history_actions[0, 0].sum()) == 0.0
    np.testing.assert_array_equal(batch.user_hashes, data.user_hashes[[1, 2]])
    assert batch.candidate_post_hashes.shape == (2, 0, 2)

    example = RetrievalStream(split, 1, 2, num_negatives=2, seed=0)(0)
    assert int(example.batch.candidate_post_hashes[0, 0, 0]) == 3  # user 1's second item
    assert example.negative_post_hashes.shape == (2, 2)
    assert bool(np.all(np.isfinite(np.asarray(example.positive_log_q))))

    # Two candidates: the positive and the one item user 1 has not seen (never a seen one).
    ranking = RankingStream(split, 1, 2, 2, seed=0)(0)
    valid_labels = np.asarray(ranking.labels)[0]
    candidates = np.asarray(ranking.batch.candidate_post_hashes)[0, :, 0]
    positive = int(np.flatnonzero(candidates == 3)[0])
    assert valid_labels[positive, ACTIONS.index("click_score")] == 1.0
    assert valid_labels.sum() == valid_labels[positive].sum()  # negatives: no action
