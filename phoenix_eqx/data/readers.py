"""Interaction logs from files, by column name: `(user_ids, item_ids, timestamps, ratings)`
ready for `Recommender.fit(*read_interactions_csv(...))`.

A file's mistakes (a ragged row, an empty id, a word in a number column, bytes in another
encoding) are errors naming the file and the line (or Parquet row): read on, they would shift,
drop or misattribute interactions without a sign."""

import csv
import io
import math
import os
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path

import numpy as np

Interactions = tuple[list[Hashable], list[Hashable], np.ndarray, np.ndarray | None]


def _empty(value: object) -> bool:
    """A missing field: Parquet's null, or a CSV field holding nothing but spaces."""
    return value is None or (isinstance(value, str) and not value.strip())


def _shown(value: object) -> str:
    """A field's value for an error message: empty ones said in words, `''` is easy to miss."""
    return "an empty value" if _empty(value) else repr(value)


def _interaction_columns(
    path: str | os.PathLike,
    columns: Sequence[str],
    read_column: Callable[[str], list],
    where: Callable[[int], str],
    *,
    user: str,
    item: str,
    timestamp: str,
    rating: str | None,
) -> Interactions:
    """`(user_ids, item_ids, timestamps, ratings)` from a file with `columns`, read a column
    at a time by `read_column`; each named column must exist, ids be non-empty, timestamps
    and ratings finite numbers. `where(i)` says where record `i` is in the file."""
    named = [("user", user), ("item", item), ("timestamp", timestamp)]
    for argument, column in named + ([("rating", rating)] if rating is not None else []):
        if column not in columns:
            raise ValueError(
                f"{argument}: expected a column of {path}, got {column!r} "
                f"(columns: {list(columns)})"
            )

    def ids(column: str, argument: str) -> list[Hashable]:
        values = read_column(column)
        for index, value in enumerate(values):
            if _empty(value):
                raise ValueError(
                    f"{argument}: expected an id in column {column!r} of {path}, "
                    f"{where(index)}, got {_shown(value)}"
                )
        return values

    def numbers(column: str, argument: str) -> np.ndarray:
        values = read_column(column)
        parsed = np.empty(len(values), np.float64)
        for index, value in enumerate(values):
            try:
                parsed[index] = float(value)
            except (TypeError, ValueError):
                parsed[index] = math.nan
            if not math.isfinite(parsed[index]):
                raise ValueError(
                    f"{argument}: expected numbers (finite) in column {column!r} of {path}, "
                    f"{where(index)}, got {_shown(value)}"
                )
        return parsed

    return (
        ids(user, "user"),
        ids(item, "item"),
        numbers(timestamp, "timestamp"),
        numbers(rating, "rating") if rating is not None else None,
    )


def _utf8_text(path: str | os.PathLike) -> str:
    """The file's text, decoded as UTF-8 with any byte-order mark dropped (spreadsheet
    programs write one, and it would otherwise become part of the first column's name)."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise ValueError(f"path: cannot read {str(path)!r}: {error}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        # `error.object` is the data after any byte-order mark; positions count from there.
        line = error.object.count(b"\n", 0, error.start) + 1
        raise ValueError(
            f"path: expected UTF-8 text in {str(path)!r}, got byte "
            f"0x{error.object[error.start]:02x} on line {line} ({error.reason}); "
            f"re-save the file as UTF-8"
        ) from None


def read_interactions_csv(
    path: str | os.PathLike,
    *,
    user: str,
    item: str,
    timestamp: str,
    rating: str | None = None,
) -> Interactions:
    """`(user_ids, item_ids, timestamps, ratings)` from a UTF-8 CSV file with a header row,
    ready for `Recommender.fit(*read_interactions_csv(...))`. Ids stay strings; `rating=None`
    gives `ratings=None` (implicit feedback). Blank lines are skipped; every other row must
    have the header's number of fields."""
    reader = csv.reader(io.StringIO(_utf8_text(path), newline=""), strict=True)
    header: list[str] | None = None
    records: list[list[str]] = []
    lines: list[int] = []  # each record's first line, for errors
    next_line = 1
    try:
        for row in reader:
            # A quoted field may span lines: the record starts where the last one ended.
            line, next_line = next_line, reader.line_num + 1
            if not row:
                continue
            if header is None:
                header = row
            elif len(row) != len(header):
                raise ValueError(
                    f"path: expected {len(header)} fields (as in the header) on line {line} "
                    f"of {str(path)!r}, got {len(row)}"
                )
            else:
                records.append(row)
                lines.append(line)
    except csv.Error as error:
        raise ValueError(
            f"path: expected CSV in {str(path)!r}, line {reader.line_num}: {error}"
        ) from None
    if header is None:
        raise ValueError(f"path: expected a header row in {str(path)!r}, got an empty file")
    named = {"user": user, "item": item, "timestamp": timestamp, "rating": rating}
    for argument, column in named.items():
        if column is not None and header.count(column) > 1:
            raise ValueError(
                f"{argument}: expected one column {column!r} in {str(path)!r}, "
                f"got {header.count(column)}"
            )

    def read_column(column: str) -> list[str]:
        index = header.index(column)
        return [record[index] for record in records]

    return _interaction_columns(
        path,
        header,
        read_column,
        lambda index: f"line {lines[index]}",
        user=user,
        item=item,
        timestamp=timestamp,
        rating=rating,
    )


def read_interactions_parquet(
    path: str | os.PathLike,
    *,
    user: str,
    item: str,
    timestamp: str,
    rating: str | None = None,
) -> Interactions:
    """`(user_ids, item_ids, timestamps, ratings)` from a Parquet file, by column name, as
    `read_interactions_csv` gives them (ids keep their Parquet type: strings stay strings,
    integers ints). Needs pyarrow: `pip install phoenix-eqx[parquet]`."""
    try:
        import pyarrow.parquet as parquet
    except ImportError:
        raise ImportError(
            "read_interactions_parquet needs pyarrow: pip install phoenix-eqx[parquet]"
        ) from None
    try:
        columns = parquet.read_schema(path).names
    except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError
        raise ValueError(f"path: cannot read {str(path)!r}: {error}") from None
    return _interaction_columns(
        path,
        columns,
        # Only the named columns are read, one at a time.
        lambda column: parquet.read_table(path, columns=[column]).column(0).to_pylist(),
        lambda index: f"row {index + 1}",
        user=user,
        item=item,
        timestamp=timestamp,
        rating=rating,
    )
