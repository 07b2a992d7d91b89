"""A fitted `Recommender` on disk, in files that need no pickle, verified before they are used.

A saved directory holds
- `recommender.json`: options, item and user ids, validation, the side features' columns;
- `models.eqx`: `eqx.tree_serialise_leaves` of (retriever, ranker), one .npy record per array;
- `histories.npz`, `features.npz`: the fitted histories (item rows and their action masks)
  and the side features' hash rows;
- `manifest.json`, written last: each of those four files' size and SHA-256, and the SHA-256
  of its own content.

`load` reads each file once, compares its size and (with `verify`) its SHA-256 with the
manifest, and parses only the bytes it compared. It then checks the files against each other
(ids against hash rows, histories against items, the models' array shapes against the options)
before building anything. A damaged or inconsistent save is therefore a ValueError naming the
file, never a model that recommends something else.

`save` writes everything into a temporary sibling directory (`.<name>.saving-<random>`),
flushes it to disk, and only then swaps it into place, so that `directory` holds either the
previous save or the new one, complete. On Linux the swap is one atomic exchange of the two
directories (`renameat2` with `RENAME_EXCHANGE`). Where that is unavailable it is two renames,
the previous save first moved aside to `.<name>.previous-<random>`: a crash between them
leaves no `directory` but the previous save beside it, which `load`'s error names. A process
killed mid-save leaves its temporary directory behind, never at `directory`; it has no manifest
unless complete, and may be deleted.
"""

import ctypes
import dataclasses
import errno
import hashlib
import io
import json
import math
import os
import secrets
import shutil
import sys
import zipfile
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import numpy as np

from ..config import ACTIONS
from ..data.feature_hashes import FeatureHashes
from ..training.models import TrainableRanker, TrainableRetriever
from .index import engaged_masks
from .models import build_models
from .options import FitOptions

FORMAT_VERSION = 3  # 3: manifest.json of checksums; 2: side features (features.npz)
# Saves from before the manifest; `load(..., verify=False)` reads them, having nothing to verify.
UNVERIFIED_FORMAT_VERSION = 2
DATA_FILES = ("recommender.json", "models.eqx", "histories.npz", "features.npz")
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "phoenix_eqx saved Recommender manifest 1"
# The options the models' array shapes depend on (besides the side features' row counts).
SHAPE_OPTIONS = ("emb_size", "key_size", "num_heads", "num_layers")
_AT_FDCWD, _RENAME_EXCHANGE = -100, 2  # <fcntl.h>, <linux/fs.h>
# Shape and dtype of each array of models.eqx, in order.
Layout = list[tuple[tuple[int, ...], np.dtype]]


@dataclasses.dataclass(frozen=True)
class Saved:
    """Everything a `Recommender` is made of (see `Recommender.__init__`)."""

    retriever: TrainableRetriever
    ranker: TrainableRanker
    options: FitOptions
    item_ids: list
    histories: dict
    history_actions: dict
    use_ranker: bool
    validation: dict[str, dict[str, float]]
    validation_history: list
    features: FeatureHashes
    cooccurrence_weight: float = 0.0


def save(saved: Saved, directory: str | os.PathLike) -> None:
    """Write `saved` into `directory` atomically: afterwards it holds this save, complete; if
    interrupted, what it held before.

    `directory` may be absent (created, with its parents), empty, or a previous save. One that
    holds other files is refused with a ValueError rather than replaced: save deletes no file
    but a previous save's.
    """
    for name, ids in (("item_ids", saved.item_ids), ("user_ids", list(saved.histories))):
        bad = next((i for i in ids if not isinstance(i, str | int | float)), None)
        if bad is not None:
            raise ValueError(f"{name}: save needs str, int or float ids, got {bad!r}")
    path = Path(directory).resolve()
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"directory: expected a directory to save into, got file {path}")
        others = sorted({entry.name for entry in path.iterdir()} - {*DATA_FILES, MANIFEST})
        if others:
            raise ValueError(
                f"directory: expected an empty directory or a previous save, got {path} holding "
                f"{others[:5]}: save replaces the whole directory, so it keeps away from them"
            )
    contents = _encode(saved)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.parent / f".{path.name}.saving-{secrets.token_hex(4)}"
    temporary.mkdir()
    try:
        entries = {name: _write(temporary / name, data) for name, data in contents.items()}
        _write_manifest(temporary, entries)
        _sync_directory(temporary)
        _put_in_place(temporary, path)
    finally:
        # A failed save's partial files, or after an exchange the previous save.
        shutil.rmtree(temporary, ignore_errors=True)


def _encode(saved: Saved) -> dict[str, bytes]:
    """The bytes of each data file, built in memory so that each is hashed as written."""
    sequences = list(saved.histories.values())
    models = io.BytesIO()
    eqx.tree_serialise_leaves(models, (saved.retriever, saved.ranker))
    meta = {
        "format_version": FORMAT_VERSION,
        "options": dataclasses.asdict(saved.options),
        "item_ids": saved.item_ids,
        "user_ids": list(saved.histories),
        "use_ranker": saved.use_ranker,
        "cooccurrence_weight": saved.cooccurrence_weight,
        "validation": saved.validation,
        "validation_history": saved.validation_history,
        "features": {
            "item_columns": saved.features.item_columns,
            "user_columns": saved.features.user_columns,
            "num_post_rows": saved.features.num_post_rows,
            "num_user_rows": saved.features.num_user_rows,
        },
    }
    return {
        "recommender.json": json.dumps(meta).encode(),
        "models.eqx": models.getvalue(),
        "histories.npz": _npz(
            lengths=np.array([s.size for s in sequences], np.int64),
            items=np.concatenate(sequences).astype(np.int32),
            actions=np.concatenate(list(saved.history_actions.values())).astype(np.int32),
        ),
        "features.npz": _npz(
            item_hashes=saved.features.item_hashes,
            user_hashes=saved.features.user_rows(list(saved.histories)),
        ),
    }


def _npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _entry(data: bytes) -> dict[str, Any]:
    """A file's manifest entry."""
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _write(file: Path, data: bytes) -> dict[str, Any]:
    """Write `data` to `file` and flush it to disk (the swap must not precede the data);
    return its manifest entry."""
    with open(file, "wb") as stream:
        stream.write(data)
        stream.flush()
        os.fsync(stream.fileno())
    return _entry(data)


def _canonical(value: Any) -> bytes:
    """The one serialisation of a JSON value that the manifest may have: every other, even
    one differing in whitespace alone, is damage."""
    return json.dumps(value, sort_keys=True, indent=1).encode() + b"\n"


def _write_manifest(directory: Path, entries: dict[str, dict[str, Any]]) -> None:
    """Write `manifest.json`, the last file of a save: until it exists the save is incomplete."""
    body = {"format": MANIFEST_FORMAT, "files": entries}
    manifest = {**body, "sha256": hashlib.sha256(_canonical(body)).hexdigest()}
    _write(directory / MANIFEST, _canonical(manifest))


def _sync_directory(directory: Path) -> None:
    """Flush a directory's entries to disk (POSIX: a rename is durable once its directory is)."""
    if hasattr(os, "O_DIRECTORY"):
        descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def _put_in_place(new: Path, path: Path) -> None:
    """Make the complete save `new` the directory `path`. Where a previous save is exchanged
    for it, `new` then holds that previous save, for the caller to delete."""
    if not path.exists() or not any(path.iterdir()):
        os.replace(new, path)  # replaces an empty directory in one step
    elif not _exchange(new, path):
        aside = path.parent / f".{path.name}.previous-{secrets.token_hex(4)}"
        os.rename(path, aside)
        try:
            os.rename(new, path)
        except BaseException:
            os.rename(aside, path)
            raise
        shutil.rmtree(aside)
    _sync_directory(path.parent)


def _exchange(first: Path, second: Path) -> bool:
    """Swap two directories in one atomic step (Linux's `renameat2` with `RENAME_EXCHANGE`);
    False where the system or the file system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:  # a C library without it (glibc before 2.28)
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p]
    renameat2.argtypes += [ctypes.c_uint]
    first_name, second_name = os.fsencode(first), os.fsencode(second)
    if renameat2(_AT_FDCWD, first_name, _AT_FDCWD, second_name, _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(second))


def load(directory: str | os.PathLike, *, verify: bool = True) -> Saved:
    """What `save` wrote into `directory`, checked before anything is built: a ValueError
    names the file that is missing, damaged or inconsistent with the others.

    `verify` compares every file's SHA-256 with the manifest. False skips only that hashing:
    sizes and consistency are still checked, so truncation is found but a changed byte inside
    a file is not. It also reads format-2 saves, which predate the manifest.
    """
    path = Path(directory)
    if not path.is_dir():
        raise ValueError(
            f"directory: expected a saved Recommender, got {str(path)!r}, not a directory"
            + _set_aside(path)
        )
    missing = [name for name in (*DATA_FILES, MANIFEST) if not (path / name).is_file()]
    if missing and (verify or missing != [MANIFEST]):
        raise ValueError(
            f"directory: expected a saved Recommender in {str(path)!r}, missing {missing}"
            + (
                " (save writes manifest.json last: the save is incomplete, or predates "
                "checksums, format 2, which loads with verify=False)"
                if MANIFEST in missing and len(missing) < len(DATA_FILES)
                else ""
            )
        )
    manifest = None if missing else _read_manifest(path)
    contents = {
        name: _read(path, name, None if manifest is None else manifest[name], verify)
        for name in DATA_FILES
    }
    meta = _metadata(contents["recommender.json"], has_manifest=manifest is not None)
    options = _options(meta["options"])
    item_ids, user_ids = _ids(meta, "item_ids"), _ids(meta, "user_ids")
    features = _features(contents["features.npz"], meta["features"], item_ids, user_ids)
    sequences, actions = _histories(contents["histories.npz"], len(item_ids), len(user_ids))
    retriever, ranker = _models(contents["models.eqx"], options, features)
    return Saved(
        retriever=retriever,
        ranker=ranker,
        options=options,
        item_ids=item_ids,
        histories=dict(zip(user_ids, sequences, strict=True)),
        history_actions=dict(zip(user_ids, actions, strict=True)),
        use_ranker=meta["use_ranker"],
        validation=meta["validation"],
        validation_history=[tuple(record) for record in meta["validation_history"]],
        features=features,
        cooccurrence_weight=_cooccurrence_weight(meta),
    )


def _set_aside(path: Path) -> str:
    """Where a save interrupted between its two renames left the previous save, if anywhere."""
    aside = sorted(path.parent.glob(f".{path.name}.previous-*")) if path.parent.is_dir() else []
    return f"; an interrupted save left the previous save in {str(aside[-1])!r}" if aside else ""


def _read_manifest(path: Path) -> dict[str, dict[str, Any]]:
    """The manifest's entry of each data file, the manifest itself verified first."""
    data = _read(path, MANIFEST, None, verify=False)
    damaged = f"{MANIFEST}: checksum mismatch, the file is damaged (directory {str(path)!r})"
    try:
        manifest = json.loads(data)
    except ValueError as error:
        raise ValueError(f"{damaged}: unreadable JSON ({error})") from None
    if (
        not isinstance(manifest, dict)
        or set(manifest) != {"format", "files", "sha256"}
        or data != _canonical(manifest)
    ):
        raise ValueError(f"{damaged}: not the JSON save writes")
    body = {key: value for key, value in manifest.items() if key != "sha256"}
    if hashlib.sha256(_canonical(body)).hexdigest() != manifest["sha256"]:
        raise ValueError(f"{damaged}: its content does not match its own SHA-256")
    if manifest["format"] != MANIFEST_FORMAT:
        raise ValueError(
            f"{MANIFEST}: expected format {MANIFEST_FORMAT!r}, got {manifest['format']!r}"
        )
    files = manifest["files"]
    if (
        not isinstance(files, dict)
        or sorted(files) != sorted(DATA_FILES)
        or any(
            not isinstance(entry, dict) or set(entry) != {"bytes", "sha256"}
            for entry in files.values()
        )
    ):
        raise ValueError(
            f"{MANIFEST}: expected a size and SHA-256 of each of {list(DATA_FILES)}, got {files!r}"
        )
    return files


def _read(path: Path, name: str, entry: dict[str, Any] | None, verify: bool) -> bytes:
    """A data file's bytes, compared with its manifest entry (if any): its size, and with
    `verify` its SHA-256. Read once, so what is parsed is what was compared."""
    try:
        data = (path / name).read_bytes()
    except OSError as error:
        raise ValueError(f"{name}: unreadable in directory {str(path)!r}: {error}") from None
    if entry is None:
        return data
    if len(data) != entry["bytes"]:
        raise ValueError(
            f"{name}: size mismatch, the file is damaged (directory {str(path)!r}): expected "
            f"{entry['bytes']} bytes as saved, got {len(data)}"
        )
    if verify and (actual := hashlib.sha256(data).hexdigest()) != entry["sha256"]:
        raise ValueError(
            f"{name}: checksum mismatch, the file is damaged (directory {str(path)!r}): "
            f"expected SHA-256 {entry['sha256']}, got {actual}"
        )
    return data


def _metadata(data: bytes, *, has_manifest: bool) -> dict[str, Any]:
    """recommender.json's fields, of the format the manifest's presence implies."""
    try:
        meta = json.loads(data)
    except ValueError as error:
        raise ValueError(f"recommender.json: unreadable JSON ({error})") from None
    fields = {
        "format_version": int,
        "options": dict,
        "item_ids": list,
        "user_ids": list,
        "use_ranker": bool,
        "validation": dict,
        "validation_history": list,
        "features": dict,
    }
    if not isinstance(meta, dict):
        raise ValueError(f"recommender.json: expected a JSON object, got {type(meta).__name__}")
    for field, kind in fields.items():
        if not isinstance(meta.get(field), kind):
            raise ValueError(
                f"recommender.json: {field}: expected a JSON {kind.__name__}, "
                f"got {meta.get(field, '(none)')!r}"
            )
    if any(not isinstance(record, list) for record in meta["validation_history"]):
        raise ValueError(
            "recommender.json: validation_history: expected lists (seconds, stage, epoch, "
            f"HR@10), got {meta['validation_history']!r}"
        )
    expected = FORMAT_VERSION if has_manifest else UNVERIFIED_FORMAT_VERSION
    if meta["format_version"] != expected:
        if meta["format_version"] == FORMAT_VERSION:
            raise ValueError(
                f"{MANIFEST}: missing, though recommender.json is format {FORMAT_VERSION}, "
                "whose saves write it last: the save is incomplete"
            )
        raise ValueError(
            f"recommender.json: format_version: expected {expected}"
            f"{'' if has_manifest else ' (no manifest.json)'}, got {meta['format_version']}"
        )
    return meta


def _options(fields: dict[str, Any]) -> FitOptions:
    try:
        weights = tuple((name, weight) for name, weight in fields["action_weights"])
        # JSON keeps tuples as lists; saves from before the prior have no weights (off).
        prior_weights = tuple(fields.get("cooccurrence_weights", (0.0,)))
        # Saves from before the residual ranker trained and served the BCE one.
        return FitOptions(
            **{
                "ranker_loss": "bce",
                **fields,
                "action_weights": weights,
                "cooccurrence_weights": prior_weights,
            }
        )
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"recommender.json: options: expected FitOptions, got {error}") from None


def _cooccurrence_weight(meta: dict[str, Any]) -> float:
    """The prior's weight; saves from before the prior have none (0)."""
    weight = meta.get("cooccurrence_weight", 0.0)
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not weight >= 0:
        raise ValueError(
            f"recommender.json: cooccurrence_weight: expected a number >= 0, got {weight!r}"
        )
    return float(weight)


def _ids(meta: dict[str, Any], field: str) -> list:
    ids = meta[field]
    bad = next((i for i in ids if not isinstance(i, str | int | float)), None)
    if bad is not None:
        raise ValueError(f"recommender.json: {field}: expected str, int or float ids, got {bad!r}")
    if len(set(ids)) != len(ids):
        raise ValueError(f"recommender.json: {field}: expected distinct ids, got repeats")
    return ids


def _arrays(
    name: str, data: bytes, keys: tuple[str, ...], optional: tuple[str, ...] = ()
) -> dict[str, np.ndarray]:
    """The integer arrays `keys` (and those of `optional` it holds) of an npz file's bytes
    (read from memory: no file to close)."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as stored:
            arrays = {key: stored[key] for key in stored.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise ValueError(f"{name}: unreadable, the file is damaged: {error}") from None
    if not set(keys) <= set(arrays) <= {*keys, *optional}:
        expected = sorted(keys) + ([f"optionally {sorted(optional)}"] if optional else [])
        raise ValueError(f"{name}: expected arrays {expected}, got {sorted(arrays)}")
    for key, array in arrays.items():
        if not np.issubdtype(array.dtype, np.integer):
            raise ValueError(f"{name}: {key}: expected integers, got {array.dtype}")
    return arrays


def _check_rows(name: str, array: np.ndarray, shape: tuple[int, int], rows: int) -> None:
    """An array of hash rows: of `shape`, every row in `0..rows - 1` (a row outside a table
    would be clamped by the gather, silently reading another)."""
    if array.shape != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {array.shape}")
    if array.size and (array.min() < 0 or array.max() >= rows):
        raise ValueError(
            f"{name}: expected rows in 0..{rows - 1}, got {array.min()}..{array.max()}"
        )


def _features(data: bytes, meta: dict[str, Any], item_ids: list, user_ids: list) -> FeatureHashes:
    arrays = _arrays("features.npz", data, ("item_hashes", "user_hashes"))
    try:
        item_columns = tuple(meta["item_columns"])
        user_columns = tuple(meta["user_columns"])
        num_post_rows, num_user_rows = int(meta["num_post_rows"]), int(meta["num_user_rows"])
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(
            f"recommender.json: features: expected save's fields, got {error}"
        ) from None
    if arrays["item_hashes"].ndim != 2:
        raise ValueError(
            f"features.npz: item_hashes: expected 2 dimensions, got {arrays['item_hashes'].shape}"
        )
    item_rows = arrays["item_hashes"].shape[0] - 1  # row 0 is padding
    if item_rows != len(item_ids):
        raise ValueError(
            f"recommender.json: item_ids: expected {item_rows} ids (features.npz holds the hash "
            f"rows of {item_rows} items), got {len(item_ids)}: the files do not belong together"
        )
    _check_rows(
        "features.npz: item_hashes",
        arrays["item_hashes"],
        (len(item_ids) + 1, 1 + len(item_columns)),
        num_post_rows,
    )
    _check_rows(
        "features.npz: user_hashes",
        arrays["user_hashes"],
        (len(user_ids), 1 + len(user_columns)),
        num_user_rows,
    )
    return FeatureHashes(
        item_columns=item_columns,
        user_columns=user_columns,
        item_hashes=arrays["item_hashes"],
        user_hashes=dict(zip(user_ids, arrays["user_hashes"], strict=True)),
        num_post_rows=num_post_rows,
        num_user_rows=num_user_rows,
    )


def _histories(
    data: bytes, num_items: int, num_users: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each user's item rows and their action masks, in recommender.json's user order (saves
    from before action masks: every item engaged)."""
    arrays = _arrays("histories.npz", data, ("lengths", "items"), optional=("actions",))
    lengths, items = arrays["lengths"], arrays["items"]
    if lengths.shape != (num_users,):
        raise ValueError(
            f"histories.npz: lengths: expected shape ({num_users},) (one per user of "
            f"recommender.json), got {lengths.shape}"
        )
    if lengths.size and lengths.min() < 0:
        raise ValueError(f"histories.npz: lengths: expected lengths >= 0, got {lengths.min()}")
    if items.shape != (int(lengths.sum()),):
        raise ValueError(
            f"histories.npz: items: expected shape ({int(lengths.sum())},) (the sum of the "
            f"lengths), got {items.shape}"
        )
    if items.size and (items.min() < 1 or items.max() > num_items):
        raise ValueError(
            f"histories.npz: items: expected item rows in 1..{num_items}, "
            f"got {items.min()}..{items.max()}"
        )
    actions = arrays.get("actions", engaged_masks(items.size))
    if actions.shape != items.shape:
        raise ValueError(
            f"histories.npz: actions: expected shape {items.shape} (one per item), "
            f"got {actions.shape}"
        )
    if actions.size and (actions.min() < 0 or actions.max() >= 1 << len(ACTIONS)):
        raise ValueError(
            f"histories.npz: actions: expected action masks in 0..{(1 << len(ACTIONS)) - 1}, "
            f"got {actions.min()}..{actions.max()}"
        )
    bounds = np.cumsum(lengths)[:-1]
    return np.split(items, bounds), np.split(actions.astype(np.int32), bounds)


def _skeleton(
    options: FitOptions, features: FeatureHashes
) -> tuple[TrainableRetriever, TrainableRanker]:
    """The models `options` build, as shapes alone (traced, not computed)."""
    return eqx.filter_eval_shape(build_models, options, features, key=jax.random.key(0))


def _layout(models: Any) -> list[tuple[str, tuple[int, ...], np.dtype]]:
    """Path, shape and dtype of every array of the `_skeleton` `models`, in the order
    `tree_serialise_leaves` writes them."""
    return [
        (jax.tree_util.keystr(path), tuple(leaf.shape), np.dtype(leaf.dtype))
        for path, leaf in jax.tree_util.tree_flatten_with_path(models)[0]
        if isinstance(leaf, jax.ShapeDtypeStruct)
    ]


def _stored_layout(data: bytes) -> Layout:
    """Shape and dtype of each array in models.eqx's bytes, from the .npy records' headers."""
    stream = io.BytesIO(data)
    layout: Layout = []
    readers = {
        (1, 0): np.lib.format.read_array_header_1_0,
        (2, 0): np.lib.format.read_array_header_2_0,
    }
    while stream.tell() < len(data):
        start = stream.tell()
        try:
            shape, _, dtype = readers[np.lib.format.read_magic(stream)](stream)
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(
                f"models.eqx: truncated or damaged: array {len(layout)} (at byte {start}) has "
                f"no readable header ({error})"
            ) from None
        end = stream.tell() + math.prod(shape) * dtype.itemsize
        if dtype.hasobject or end > len(data):
            raise ValueError(
                f"models.eqx: truncated or damaged: array {len(layout)} "
                f"({shape}, {dtype}) ends at byte {end}, the file has {len(data)}"
            )
        stream.seek(end)
        layout.append((tuple(shape), dtype))
    return layout


def _models(
    data: bytes, options: FitOptions, features: FeatureHashes
) -> tuple[TrainableRetriever, TrainableRanker]:
    """The models in models.eqx, once its arrays' shapes are those `options` build."""
    skeleton = _skeleton(options, features)
    stored = _stored_layout(data)
    expected = _layout(skeleton)
    if [(shape, dtype) for _, shape, dtype in expected] != stored:
        raise ValueError(_mismatch(stored, expected, options, features))
    return eqx.tree_deserialise_leaves(io.BytesIO(data), skeleton)


def _mismatch(
    stored: Layout,
    expected: list[tuple[str, tuple[int, ...], np.dtype]],
    options: FitOptions,
    features: FeatureHashes,
) -> str:
    """Why models.eqx's arrays do not fit the options, naming the option that would fit them
    when changing one of `SHAPE_OPTIONS` does: a value is tried for each option, the one that
    scales the first differing array's sizes to the stored ones."""
    first = next(
        (
            index
            for index, (want, got) in enumerate(zip(expected, stored, strict=False))
            if want[1:] != got
        ),
        None,
    )
    if first is None:
        return (
            f"models.eqx: expected the {len(expected)} arrays recommender.json's options "
            f"build, got {len(stored)}: the file is truncated, or saved with other options"
        )
    path, shape, dtype = expected[first]
    stored_shape = stored[first][0]
    difference = (
        f"array {path}: the options give {shape} {dtype}, the file holds "
        f"{stored_shape} {stored[first][1]}"
    )
    # Sizes scale with the options: the value that turns each differing size into the stored.
    pairs = list(zip(shape, stored_shape, strict=True)) if len(shape) == len(stored_shape) else []
    fits = []
    for field in SHAPE_OPTIONS:
        current = getattr(options, field)
        values = {
            got * current // want
            for want, got in pairs
            if 0 < want != got and got * current % want == 0
        }
        for value in sorted(values):
            try:
                other = dataclasses.replace(options, **{field: value})
            except ValueError:
                continue
            if [layout[1:] for layout in _layout(_skeleton(other, features))] == stored:
                fits.append((field, value))
    if fits:
        return (
            "models.eqx: saved with other options than recommender.json's: "
            + " or ".join(f"{field}={value}" for field, value in fits)
            + " fits its arrays, recommender.json has "
            + ", ".join(f"{field}={getattr(options, field)}" for field, _ in fits)
            + f" ({difference})"
        )
    sizes = ", ".join(f"{field}={getattr(options, field)}" for field in SHAPE_OPTIONS)
    return (
        f"models.eqx: its arrays fit neither recommender.json's options ({sizes}) nor those "
        f"with one of them changed; side features {features.item_columns} "
        f"{features.user_columns} ({difference})"
    )
