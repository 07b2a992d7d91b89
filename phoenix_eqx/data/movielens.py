"""MovieLens-100K: fetch, parse (GroupLens `u.*` files or RecBole atomic files), map to Phoenix.

The data's licence forbids redistribution, so it is never part of this repository: the set-up
downloads the `recbole==1.2.1` wheel from PyPI with pip (without installing it) into a cache
directory and reads `recbole/dataset_example/ml-100k/ml-100k.{inter,item,user}` from the zip.
A directory or zip with the standard `u.data`, `u.item`, `u.user` works too.

Mapping to Phoenix features (ids index the `HashEmbeddingTables`; 0 is padding):
- user hashes: `[user id, demographic bucket (gender x occupation)]`;
- post hashes: `[item id, release decade]` (decade hash 0 when the date is unknown);
- author hashes (an author-like grouping): `[first genre, second genre]`;
- product surface: the first genre's index (19 genres);
- actions from the rating: see `interactions.RATING_ACTIONS`.
"""

import os
import re
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .interactions import InteractionData

RECBOLE_REQUIREMENT = "recbole==1.2.1"
RECBOLE_WHEEL = "recbole-1.2.1-py3-none-any.whl"
RECBOLE_PREFIX = "recbole/dataset_example/ml-100k/"
CACHE_ENV = "PHOENIX_EQX_CACHE"

# Genre order of the GroupLens `u.genre` file (the 19 flags at the end of each `u.item` line).
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


def recbole_wheel_path(cache: str | os.PathLike | None = None, *, download: bool = True) -> Path:
    """Path of the cached `recbole==1.2.1` wheel, downloaded with pip if it is not there yet.

    Runs `python -m pip download --no-deps recbole==1.2.1 -d <cache>` (needs PyPI); recbole is
    neither installed nor imported.
    """
    directory = Path(cache) if cache is not None else cache_dir()
    wheel = directory / RECBOLE_WHEEL
    if wheel.is_file():
        return wheel
    if not download:
        raise FileNotFoundError(f"cache: expected {wheel} (run with download=True), not found")
    directory.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet"]
    command += [RECBOLE_REQUIREMENT, "-d", str(directory)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0 or not wheel.is_file():
        raise RuntimeError(f"`{' '.join(command)}` failed:\n{result.stderr.strip()}")
    return wheel


def _reader(source: Path) -> tuple[Callable[[str], str | None], str]:
    """A function reading a named data file from a directory or zip (None if absent)."""
    if source.is_dir():

        def read_dir(name: str) -> str | None:
            matches = [p for p in (source / name, source / "ml-100k" / name) if p.is_file()]
            return matches[0].read_bytes().decode("latin-1") if matches else None

        return read_dir, str(source)
    if zipfile.is_zipfile(source):
        archive = zipfile.ZipFile(source)
        members = {Path(name).name: name for name in archive.namelist()}

        def read_zip(name: str) -> str | None:
            member = members.get(name)
            return archive.read(member).decode("latin-1") if member else None

        return read_zip, str(source)
    raise ValueError(f"source: expected a directory or a zip file, got {source}")


def _table(text: str, separator: str, name: str, min_columns: int) -> list[list[str]]:
    rows = [line.split(separator) for line in text.splitlines() if line.strip()]
    for number, row in enumerate(rows, 1):
        if len(row) < min_columns:
            raise ValueError(
                f"{name}: expected at least {min_columns} columns on line {number}, got {len(row)}"
            )
    return rows


def _decade(year: int | None) -> int:
    """Decade bucket in `1..NUM_DECADES`, 0 when the year is unknown."""
    if year is None:
        return 0
    return 1 + int(np.clip((year - FIRST_DECADE) // 10, 0, NUM_DECADES - 1))


def _year(text: str) -> int | None:
    match = re.search(r"(\d{4})", text)
    return int(match.group(1)) if match else None


def _parse_standard(read: Callable[[str], str | None]):
    """GroupLens files: `u.data` (tab), `u.item` and `u.user` (pipe)."""
    ratings = _table(read("u.data") or "", "\t", "u.data", 4)
    items = {}
    for row in _table(read("u.item") or "", "|", "u.item", 5 + len(GENRES)):
        flags = [int(flag) for flag in row[-len(GENRES) :]]
        items[int(row[0])] = ([g for g, flag in enumerate(flags) if flag], _year(row[2]))
    users = {}
    for row in _table(read("u.user") or "", "|", "u.user", 5):
        users[int(row[0])] = (row[2], row[3])
    return ratings, items, users


def _parse_atomic(read: Callable[[str], str | None]):
    """RecBole atomic files: tab-separated with a `name:type` header line."""
    ratings = _table(read("ml-100k.inter") or "", "\t", "ml-100k.inter", 4)[1:]
    items = {}
    for row in _table(read("ml-100k.item") or "", "\t", "ml-100k.item", 4)[1:]:
        genres = sorted(GENRES.index(g) for g in row[3].split() if g in GENRES)
        items[int(row[0])] = (genres, _year(row[2]))
    users = {}
    for row in _table(read("ml-100k.user") or "", "\t", "ml-100k.user", 5)[1:]:
        users[int(row[0])] = (row[2], row[3])
    return ratings, items, users


def load_movielens_100k(source: str | os.PathLike | None = None) -> InteractionData:
    """MovieLens-100K as Phoenix features (see the module docstring for the mapping).

    `source`: a directory or zip holding `u.data`/`u.item`/`u.user` or RecBole's
    `ml-100k.inter`/`.item`/`.user`; by default the cached recbole wheel (downloaded if absent).
    User and item ids are kept as in the files (1-based, dense).
    """
    path = Path(source) if source is not None else recbole_wheel_path()
    read, where = _reader(path)
    if read("u.data") is not None:
        ratings, items, users = _parse_standard(read)
    elif read("ml-100k.inter") is not None:
        ratings, items, users = _parse_atomic(read)
    else:
        raise ValueError(f"source: expected u.data or ml-100k.inter in {where}, found neither")
    if not ratings:
        raise ValueError(f"source: expected at least one rating in {where}, got none")
    columns = np.array([[int(float(v)) for v in row[:4]] for row in ratings], np.int64)
    num_users = max(max(users, default=0), int(columns[:, 0].max()))
    num_items = max(max(items, default=0), int(columns[:, 1].max()))

    occupations = sorted({occupation for _, occupation in users.values()})
    user_hashes = np.zeros((num_users + 1, 2), np.int32)
    user_hashes[1:, 0] = np.arange(1, num_users + 1)
    for user, (gender, occupation) in users.items():
        bucket = GENDERS.index(gender) * len(occupations) + occupations.index(occupation)
        user_hashes[user, 1] = num_users + 1 + bucket

    post_hashes = np.zeros((num_items + 1, 2), np.int32)
    post_hashes[1:, 0] = np.arange(1, num_items + 1)
    author_hashes = np.zeros((num_items + 1, 2), np.int32)
    item_surface = np.zeros(num_items + 1, np.int32)
    for item, (genres, year) in items.items():
        decade = _decade(year)
        post_hashes[item, 1] = num_items + decade if decade else 0
        genres = genres or [GENRES.index("unknown")]
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
