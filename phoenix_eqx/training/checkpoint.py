"""Checkpoints of model, optimiser state, step and data position.

One file: a magic line, the SHA-256 of everything after its own line, a JSON header (step,
data position, the model's config field by field and every array's path, shape and dtype),
then the arrays as written by `eqx.tree_serialise_leaves`. The checksum makes a truncated,
padded or bit-flipped file an error rather than a silently different model. The file is
written to a temporary file in the same directory, flushed to disk and renamed over the
target, so a crash never leaves a half-written checkpoint. Loading restores arrays bit for bit.
"""

import dataclasses
import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import numpy as np
import optax
from jaxtyping import PyTree

MAGIC = b"PHOENIX_EQX_CHECKPOINT 2\n"
_MAGIC_PREFIX = b"PHOENIX_EQX_CHECKPOINT "
_CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A restored training state. `data_position` is whatever JSON value was saved."""

    model: PyTree
    opt_state: optax.OptState
    step: int
    data_position: Any


def _config_fields(config: Any, prefix: str = "") -> dict[str, str]:
    """A config as `{dotted field path: repr of the value}`, nested dataclasses flattened, so
    that two configs can be compared field by field."""
    fields = {f"{prefix}(type)": type(config).__name__}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            fields.update(_config_fields(value, f"{prefix}{field.name}."))
        else:
            fields[prefix + field.name] = repr(value)
    return fields


def _model_config(model: PyTree) -> dict[str, str] | None:
    config = getattr(model, "config", None)
    return None if config is None else _config_fields(config)


def _config_differences(saved: dict[str, str] | None, expected: dict[str, str] | None) -> str:
    saved, expected = saved or {}, expected or {}
    return "; ".join(
        f"{name}: saved {saved.get(name, '(none)')}, expected {expected.get(name, '(none)')}"
        for name in sorted(saved.keys() | expected.keys())
        if saved.get(name) != expected.get(name)
    )


def _layout(tree: PyTree) -> list[list[str]]:
    """`[path, shape, dtype]` of every array leaf, in flattening order."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [
        [jax.tree_util.keystr(path), str(tuple(np.shape(leaf))), str(_dtype(leaf))]
        for path, leaf in leaves
        if eqx.is_array_like(leaf)
    ]


def _dtype(leaf) -> np.dtype:
    return leaf.dtype if hasattr(leaf, "dtype") else np.result_type(leaf)


def save_checkpoint(
    path: str | os.PathLike,
    model: PyTree,
    opt_state: optax.OptState,
    *,
    step: int,
    data_position: Any = None,
) -> Path:
    """Atomically write the training state to `path` (a file; its directory must exist).

    `data_position` is any JSON value (e.g. where the data stream stopped).
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise ValueError(f"path: expected an existing directory, got {path.parent}")
    state = (model, opt_state)
    header = {
        "step": int(step),
        "data_position": data_position,
        "config": _model_config(model),
        "layout": _layout(state),
    }
    body = io.BytesIO()
    body.write(json.dumps(header).encode() + b"\n")
    eqx.tree_serialise_leaves(body, state)
    checksum = hashlib.sha256(body.getbuffer()).hexdigest().encode()
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(MAGIC)
            file.write(checksum + b"\n")
            file.write(body.getbuffer())
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def _verify(file, path: Path) -> None:
    """Check the magic line and the checksum of the rest, leaving `file` after the checksum."""
    magic = file.readline()
    if magic != MAGIC:
        if magic.startswith(_MAGIC_PREFIX):
            raise ValueError(
                f"path: expected checkpoint format {MAGIC.decode().split()[1]}, got "
                f"{magic.decode(errors='replace').strip()!r} in {path} (damaged, or written by "
                f"another phoenix_eqx version: save it again)"
            )
        if MAGIC.startswith(magic):
            raise ValueError(
                f"path: the checkpoint {path} is damaged (truncated in its first line)"
            )
        raise ValueError(f"path: expected a phoenix_eqx checkpoint, got {path}")
    recorded = file.readline().strip()
    start = file.tell()
    digest = hashlib.sha256()
    while chunk := file.read(_CHUNK):
        digest.update(chunk)
    if digest.hexdigest().encode() != recorded:
        raise ValueError(
            f"path: the checkpoint {path} is damaged (truncated, padded or corrupted): its "
            f"contents do not match the checksum written with them"
        )
    file.seek(start)


def load_checkpoint(
    path: str | os.PathLike, model: PyTree, opt_state: optax.OptState
) -> Checkpoint:
    """Restore a checkpoint into the structure of `model` and `opt_state` (templates).

    Raises a ValueError when the file is damaged (checksum mismatch), when the checkpoint comes
    from another model config (naming each field that differs), or when its arrays (table
    sizes, optimiser) differ from the templates'.
    """
    path = Path(path)
    with open(path, "rb") as file:
        _verify(file, path)
        header = json.loads(file.readline())
        expected_config = _model_config(model)
        if header["config"] != expected_config:
            raise ValueError(
                f"checkpoint {path}: expected the template's model config, got one that differs "
                f"in {_config_differences(header['config'], expected_config)}"
            )
        layout = _layout((model, opt_state))
        if header["layout"] != layout:
            found = [tuple(entry) for entry in header["layout"]]
            mismatch = next(
                (
                    (want, got)
                    for want, got in zip(layout, found, strict=False)
                    if tuple(want) != got
                ),
                (f"{len(layout)} arrays", f"{len(found)} arrays"),
            )
            raise ValueError(
                f"checkpoint {path}: arrays differ from the template (table sizes or "
                f"optimiser?): expected {mismatch[0]}, got {mismatch[1]}"
            )
        restored_model, restored_opt_state = eqx.tree_deserialise_leaves(file, (model, opt_state))
    return Checkpoint(
        model=restored_model,
        opt_state=restored_opt_state,
        step=header["step"],
        data_position=header["data_position"],
    )
