"""Bad files and bad flags: each gets one error naming the file and line, or the flag, before
any work (never a silently wrong result, never a traceback for a command-line mistake). Fast:
nothing here fits a model."""

import dataclasses

import numpy as np
import pytest

from phoenix_eqx import cli, train
from phoenix_eqx.data import load_movielens_1m, load_movielens_100k, side_features
from phoenix_eqx.data.readers import read_interactions_csv
from phoenix_eqx.recommender import FitOptions

# user, item, rating, timestamp: users and items share no id, so a swap cannot pass unseen.
RATINGS = [(1, 11, 5, 300), (1, 12, 3, 100), (2, 12, 4, 50), (2, 11, 2, 60), (3, 11, 4, 10)]
USERS = {1: ("24", "M", "technician"), 2: ("53", "F", "other"), 3: ("23", "M", "writer")}
MOVIES = {11: ("Heat", "1995", "Action Crime"), 12: ("Metropolis", "1927", "Sci-Fi")}


def _atomic(columns: list[str], rows: list[dict[str, object]]) -> str:
    """A RecBole atomic file: a `name:type` header, then the rows' values in that order."""
    header = "\t".join(columns)
    lines = ["\t".join(str(row[column.split(":")[0]]) for column in columns) for row in rows]
    return "\n".join([header, *lines]) + "\n"


def _movielens_files(
    prefix: str, inter: list[str], item: list[str], user: list[str]
) -> dict[str, str]:
    """`prefix.inter/.item/.user` with their columns in the given orders."""
    genre = "class" if prefix == "ml-100k" else "genre"
    ratings = [dict(user_id=u, item_id=i, rating=r, timestamp=t) for u, i, r, t in RATINGS]
    movies = [
        {"item_id": i, "movie_title": title, "release_year": year, genre: genres}
        for i, (title, year, genres) in MOVIES.items()
    ]
    users = [
        dict(user_id=u, age=age, gender=gender, occupation=job, zip_code="00000")
        for u, (age, gender, job) in USERS.items()
    ]
    return {
        f"{prefix}.inter": _atomic(inter, ratings),
        f"{prefix}.item": _atomic(item, movies),
        f"{prefix}.user": _atomic(user, users),
    }


INTER = ["user_id:token", "item_id:token", "rating:float", "timestamp:float"]
ITEM = ["item_id:token", "movie_title:token_seq", "release_year:token", "{genre}:token_seq"]
USER = ["user_id:token", "age:token", "gender:token", "occupation:token", "zip_code:token"]
# RecBole's usual column order, and the same columns reversed.
ORDERS = {"recbole order": (INTER, ITEM, USER), "reversed": (INTER[::-1], ITEM[::-1], USER[::-1])}


def _write(directory, files: dict[str, str]):
    directory.mkdir(exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text, encoding="utf-8")
    return directory


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize(
    "prefix, load", [("ml-100k", load_movielens_100k), ("ml-1m", load_movielens_1m)]
)
def test_atomic_files_are_read_by_column_name(tmp_path, prefix, load, order):
    genre = "class" if prefix == "ml-100k" else "genre"
    inter, item, user = ORDERS[order]
    item = [column.format(genre=genre) for column in item]
    data = load(_write(tmp_path / order, _movielens_files(prefix, inter, item, user)))
    if prefix == "ml-100k":  # ids kept as in the files
        users, items = [u for u, *_ in RATINGS], [i for _, i, *_ in RATINGS]
    else:  # dense ids in the user and item files' order
        users, items = [1, 1, 2, 2, 3], [1, 2, 2, 1, 1]
    np.testing.assert_array_equal(data.users, users)
    np.testing.assert_array_equal(data.items, items)
    np.testing.assert_array_equal(data.ratings, [r for *_, r, _ in RATINGS])
    np.testing.assert_array_equal(data.timestamps, [t for *_, t in RATINGS])
    item_features, user_features = side_features(prefix, tmp_path / order)
    first_item = 11 if prefix == "ml-100k" else 1
    assert item_features["year"][first_item] == 1995
    assert item_features["genres"][first_item] == "Action|Crime"
    assert user_features["occupation"][1] == "technician"
    assert user_features["gender"][2] == "F"


@pytest.mark.parametrize("prefix", ["ml-100k", "ml-1m"])
@pytest.mark.parametrize(
    "extension, column", [("inter", "item_id"), ("item", "release_year"), ("user", "gender")]
)
def test_a_missing_atomic_column_names_the_file_and_the_column(tmp_path, prefix, extension, column):
    genre = "class" if prefix == "ml-100k" else "genre"
    item = [name.format(genre=genre) for name in ITEM]
    files = _movielens_files(prefix, INTER, item, USER)
    header, rest = files[f"{prefix}.{extension}"].split("\n", 1)
    kept = [name for name in header.split("\t") if not name.startswith(column + ":")]
    files[f"{prefix}.{extension}"] = "\t".join([*kept, "other:token"]) + "\n" + rest
    directory = _write(tmp_path / "files", files)
    load = load_movielens_100k if prefix == "ml-100k" else load_movielens_1m
    with pytest.raises(ValueError, match=rf"{prefix}\.{extension} in .*files.*'{column}'"):
        load(directory)


@pytest.mark.parametrize(
    "text, message",
    [
        ("who,what,when\nann,m1,3\nbob,m2\n", "expected 3 fields .* on line 3 .* got 2"),
        ("who,what,when\nann,m1,3,oops\nbob,m2,4\n", "expected 3 fields .* on line 2 .* got 4"),
        ("who,what,when\nann,m1,3\n\n,m2,4\n", "user: expected an id .* line 4, got an empty"),
        ("who,what,when\nann,m1,3\nbob, ,4\n", "item: expected an id .* line 3, got an empty"),
        ("who,what,when\nann,m1,\n", r"timestamp: expected numbers \(finite\) .* line 2, got an"),
        ('who,what,when\n"ann\nlee",m1,3\nbob,m2,soon\n', "'when' .* line 4, got 'soon'"),
        ("who,what,when\nann,m1,nan\n", r"timestamp: expected numbers \(finite\) .* line 2"),
    ],
    ids=["too few fields", "extra field", "empty user", "blank item", "empty time", "word", "nan"],
)
def test_csv_mistakes_name_the_line(tmp_path, text, message):
    path = tmp_path / "log.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=message) as error:
        read_interactions_csv(path, user="who", item="what", timestamp="when")
    assert str(path) in str(error.value)


def test_csv_byte_order_mark_is_not_part_of_the_first_column(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_text("who,what,when\nann,m1,3\n", encoding="utf-8-sig")
    users, items, times, _ = read_interactions_csv(path, user="who", item="what", timestamp="when")
    assert (users, items, times.tolist()) == (["ann"], ["m1"], [3.0])


def test_a_latin_1_csv_names_the_path_and_the_encoding(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes("who,what,when\nann,m1,3\nJosé,m2,4\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"expected UTF-8 .* byte 0xe9 on line 3") as error:
        read_interactions_csv(path, user="who", item="what", timestamp="when")
    assert str(path) in str(error.value)


def test_a_missing_movielens_source_is_named(tmp_path):
    with pytest.raises(ValueError, match=rf"{tmp_path / 'nowhere'} \(not found\)"):
        load_movielens_100k(tmp_path / "nowhere")


@pytest.fixture
def no_work(monkeypatch):
    """Loading data or running the demos fails the test: flag errors must come first."""

    def forbidden(*args, **kwargs):
        raise AssertionError("work started before the flags were checked")

    monkeypatch.setattr(train, "_load", forbidden)
    monkeypatch.setattr(cli, "run_demo", forbidden)
    monkeypatch.setattr(cli, "run_movielens_demo", forbidden)


def _exit_message(capsys, main, argv: list[str]) -> str:
    """stderr of `main(argv)`, which must stop as argparse does on a user's mistake."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--data", "{tmp}/missing"], "--data: expected a directory or a zip file, got {tmp}/"),
        (["--data", "{tmp}/notes.txt"], "(a file that is not a zip)"),
        (["--dataset", "synthetic", "--data", "{tmp}"], "--data: expected a MovieLens"),
        (["--budget", "-5"], "--budget: expected a positive finite number of seconds, got -5.0"),
        (["--budget", "inf"], "--budget: expected a positive finite number"),
        (["--budget", "nan"], "--budget: expected a positive finite number"),
        (["--history-seq-len", "500"], "--history-seq-len: expected an int in 1..200, got 500"),
        (["--key-size", "5"], "--key-size: expected even (rotary), got 5"),
        (["--ranker-candidates", "1"], "--ranker-candidates: expected >= 2"),
        (["--learning-rate", "nan"], "--learning-rate: expected a finite number"),
    ],
)
def test_train_flags_are_named_in_their_errors(tmp_path, capsys, no_work, argv, message):
    (tmp_path / "notes.txt").write_text("not a zip")
    argv = [value.format(tmp=tmp_path) for value in argv]
    err = _exit_message(capsys, train.main, argv)
    assert message.format(tmp=tmp_path) in err and "Traceback" not in err


def _bad_value(field: dataclasses.Field) -> str:
    """A value every flag of `field`'s type rejects."""
    default = getattr(FitOptions(), field.name)
    if isinstance(default, bool):
        return "maybe"
    return {int: "-1", float: "nan", str: "nope", tuple: "1,-1"}[type(default)]


@pytest.mark.parametrize(
    "field",
    [field for field in dataclasses.fields(FitOptions) if field.name not in train.NO_FLAG],
    ids=lambda field: field.name,
)
def test_every_fit_option_flag_rejects_a_bad_value_by_name(capsys, no_work, field):
    flag = "--" + field.name.replace("_", "-")
    assert flag + ":" in _exit_message(capsys, train.main, [flag, _bad_value(field)])


def test_a_bad_data_directory_is_a_flag_error(tmp_path, capsys):
    # The flags are fine, the directory holds no ratings: the loader's error, named by flag.
    err = _exit_message(capsys, train.main, ["--data", str(tmp_path)])
    assert f"--data: expected u.data or ml-100k.inter in {tmp_path}" in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--seed-tour", "--top-k", "0"], "--top-k: expected an int in 1..5000"),
        (["--seed-tour", "--corpus-size", "5", "--top-k", "6"], "in 1..5 (--corpus-size), got 6"),
        (["--seed-tour", "--batch-size", "0"], "--batch-size: expected an int >= 1, got 0"),
        (["--seed-tour", "--corpus-size", "0"], "--corpus-size: expected an int >= 1, got 0"),
        (["--users", "0"], "--users: expected an int >= 1, got 0"),
        (["--budget", "0"], "--budget: expected a positive finite number of seconds, got 0.0"),
        (["--budget", "inf"], "--budget: expected a positive finite number"),
        (["--seed", "-1"], "--seed: expected an int in 0..4294967295, got -1"),
    ],
)
def test_demo_flags_are_checked_before_the_demo_runs(capsys, no_work, argv, message):
    err = _exit_message(capsys, cli.main, ["demo", *argv])
    assert message in err and "phoenix-eqx demo" in err


def test_cli_train_forwards_flag_errors(capsys, no_work):
    err = _exit_message(capsys, cli.main, ["train", "--history-seq-len", "500"])
    assert "--history-seq-len: expected an int in 1..200, got 500" in err
