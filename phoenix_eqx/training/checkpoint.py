"""Checkpoints of model, optimiser state, step and data position.

One file: a magic line, a JSON header (step, data position, the model's config and every
array's path, shape and dtype), then the arrays as written by `eqx.tree_serialise_leaves`.
It is written to a temporary file in the same directory, flushed to disk and renamed over the
target, so a crash never leaves a half-written checkpoint. Loading restores arrays bit for bit.
"""

import dataclasses
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

MAGIC = b"PHOENIX_EQX_CHECKPOINT 1\n"


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A restored training state. `data_position` is whatever JSON value was saved."""

    model: PyTree
    opt_state: optax.OptState
    step: int
    data_position: Any


def _config_text(model: PyTree) -> str | None:
    config = getattr(model, "config", None)
    return None if config is None else repr(config)


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
    """Atomically write the training state to `path` (a file; its directory must exist)."""
    path = Path(path)
    if not path.parent.is_dir():
        raise ValueError(f"path: expected an existing directory, got {path.parent}")
    state = (model, opt_state)
    header = {
        "step": int(step),
        "data_position": data_position,
        "config": _config_text(model),
        "layout": _layout(state),
    }
    payload = io.BytesIO()
    eqx.tree_serialise_leaves(payload, state)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(MAGIC)
            file.write(json.dumps(header).encode() + b"\n")
            file.write(payload.getvalue())
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(
    path: str | os.PathLike, model: PyTree, opt_state: optax.OptState
) -> Checkpoint:
    """Restore a checkpoint into the structure of `model` and `opt_state` (templates).

    Raises a ValueError when the checkpoint comes from another model config, or its arrays
    (table sizes, optimiser) differ from the templates'.
    """
    path = Path(path)
    with open(path, "rb") as file:
        if file.readline() != MAGIC:
            raise ValueError(f"path: expected a phoenix_eqx checkpoint, got {path}")
        header = json.loads(file.readline())
        expected_config = _config_text(model)
        if header["config"] != expected_config:
            raise ValueError(
                f"checkpoint {path}: expected model config {expected_config}, "
                f"got {header['config']}"
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
