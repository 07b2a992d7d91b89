"""Checkpoints with Orbax: model, optimiser state, step and data position; and serving exports.

A `CheckpointManager` directory holds one subdirectory per saved step, each with two Orbax
items: `state`, the array leaves of the model and of the optimiser state (tensorstore arrays:
every process writes only the shards it owns, and a restore may place them on other devices or
another mesh), and `metadata`, JSON with the data position, the model's config field by field,
every array's path, shape, dtype and SHA-256, and the SHA-256 of the metadata itself. Static
parts (config, activation functions) are never stored: the caller's template (a model built
from its config, or `eqx.filter_eval_shape` of one) supplies them, and the restored arrays are
combined into it.

Orbax writes each step into a temporary directory and renames it once every process has
finished, so a crash mid-save leaves only a temporary directory, which `latest_step` ignores
(and a later manager deletes before its first save): an interrupted save never shadows a
complete one. Orbax keeps no checksum of the array data, so this module does: a restore
compares every array it can see whole with the SHA-256 taken at save, and a truncated or
missing file, or a changed byte, is reported as damage naming the step (and the array).

The limit is an array split over several processes (neither on one process's devices alone
nor replicated): no process holds all of it, and the metadata is written by process 0 alone,
so such an array is saved without a checksum (its entry is null). Likewise a restore that
places an array split over several processes cannot check it. Restoring such a checkpoint on
one process (onto one device, or any mesh of its own devices) checks every array that had a
checksum.

`export_model` writes a model's arrays alone (no optimiser state) for serving, and
`load_exported_model` reads them back, onto one device by default.
"""

import contextlib
import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import numpy as np
import optax
from jax.sharding import Sharding, SingleDeviceSharding
from jaxtyping import PyTree

# Stored in the metadata item: a later layout change can then be told apart from damage.
FORMAT = "phoenix_eqx checkpoint 4 (orbax)"  # 4: SHA-256 of the arrays and of the metadata
# Checkpoints saved before the checksums; restored as they are, with nothing to verify.
UNCHECKED_FORMAT = "phoenix_eqx checkpoint 3 (orbax)"

ShardingChoice = Sharding | Callable[[jax.ShapeDtypeStruct], Sharding] | None


def _orbax():
    # orbax and tensorstore take about a second to import; only checkpointing needs them.
    import orbax.checkpoint as ocp

    return ocp


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


def _is_array(leaf: Any) -> bool:
    """An array leaf of a model or template (`eqx.filter_eval_shape` gives ShapeDtypeStructs)."""
    return eqx.is_array(leaf) or isinstance(leaf, jax.ShapeDtypeStruct)


def _layout(tree: PyTree) -> list[list[str]]:
    """`[path, shape, dtype]` of every array leaf, in flattening order."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [
        [jax.tree_util.keystr(path), str(tuple(leaf.shape)), str(np.dtype(leaf.dtype))]
        for path, leaf in leaves
        if _is_array(leaf)
    ]


def _check_layout(saved: list[list[str]], template: PyTree, where: str) -> None:
    layout = _layout(template)
    if saved == layout:
        return
    mismatch = next(
        ((want, got) for want, got in zip(layout, saved, strict=False) if want != got),
        (f"{len(layout)} arrays", f"{len(saved)} arrays"),
    )
    raise ValueError(
        f"{where}: arrays differ from the template (table sizes or optimiser?): expected "
        f"{mismatch[0]}, got {mismatch[1]}"
    )


def _checksum(leaf: Any) -> str | None:
    """SHA-256 of an array's bytes in C order; None for a `jax.Array` split over several
    processes, of which this process holds only a part."""
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
        if not leaf.is_fully_replicated:
            return None
        leaf = leaf.addressable_data(0)
    data = np.ascontiguousarray(np.asarray(leaf)).reshape(-1).view(np.uint8)
    return hashlib.sha256(data).hexdigest()


def _checksums(tree: PyTree) -> list[str | None]:
    """`_checksum` of every array leaf, in the order of `_layout`."""
    return [_checksum(leaf) for leaf in jax.tree.leaves(tree) if _is_array(leaf)]


def _json_checksum(value: Any) -> str:
    """SHA-256 of a JSON value's canonical text (equal values, equal checksums)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _metadata(tree: PyTree, config_of: PyTree, **fields: Any) -> dict[str, Any]:
    """The metadata item of a save of `tree`'s arrays (`config_of`: the model), checksummed."""
    metadata = {
        "format": FORMAT,
        "config": _model_config(config_of),
        "layout": _layout(tree),
        "checksums": _checksums(tree),
        **fields,
    }
    return {**metadata, "sha256": _json_checksum(metadata)}


def _check_metadata(
    metadata: Any, model_template: PyTree, arrays: PyTree, where: str
) -> list[str | None] | None:
    """Check the saved metadata against its own checksum, the model template's config and the
    layout of `arrays` (the templates of everything saved), before any array is read; return
    the arrays' checksums (None for an `UNCHECKED_FORMAT` checkpoint, which has none)."""
    if not isinstance(metadata, dict) or metadata.get("format") not in (FORMAT, UNCHECKED_FORMAT):
        raise ValueError(f"{where}: expected format {FORMAT!r} metadata, got {metadata!r}")
    # Checked whenever present: a changed format must not pass as an unchecked checkpoint.
    if metadata["format"] == FORMAT or "sha256" in metadata:
        content = {key: value for key, value in metadata.items() if key != "sha256"}
        if metadata.get("sha256") != _json_checksum(content):
            raise ValueError(
                f"{where} is damaged: the metadata's checksum mismatches: expected SHA-256 "
                f"{metadata.get('sha256')}, got {_json_checksum(content)}"
            )
    expected = _model_config(model_template)
    if metadata["config"] != expected:
        raise ValueError(
            f"{where}: expected the template's model config, got one that differs in "
            f"{_config_differences(metadata['config'], expected)}"
        )
    _check_layout(metadata["layout"], arrays, where)
    if metadata["format"] == UNCHECKED_FORMAT:
        return None
    checksums = metadata.get("checksums")
    if not isinstance(checksums, list) or len(checksums) != len(metadata["layout"]):
        raise ValueError(
            f"{where}: expected one checksum per array ({len(metadata['layout'])}), got "
            f"{checksums!r}"
        )
    return checksums


def _verify(checksums: list[str | None] | None, restored: PyTree, where: str) -> None:
    """Compare the restored arrays with the checksums taken at save, where both are known."""
    if checksums is None:
        return
    paths = [path for path, _, _ in _layout(restored)]
    for path, expected, actual in zip(paths, checksums, _checksums(restored), strict=True):
        if None not in (expected, actual) and expected != actual:
            raise ValueError(
                f"{where} is damaged: array {path}: checksum mismatch: expected SHA-256 "
                f"{expected}, got {actual}"
            )


def _abstract(template: PyTree, shardings: ShardingChoice) -> PyTree:
    """The template's array leaves as ShapeDtypeStructs placed by `shardings`: one sharding for
    every array, a function of each array's shape and dtype, or (None) the template leaf's own
    sharding, else the first local device."""

    def place(leaf):
        shape = jax.ShapeDtypeStruct(leaf.shape, leaf.dtype)
        if isinstance(shardings, Sharding):
            sharding = shardings
        elif shardings is not None:
            sharding = shardings(shape)
        else:
            sharding = getattr(leaf, "sharding", None) or SingleDeviceSharding(
                jax.local_devices()[0]
            )
        return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding)

    return jax.tree.map(place, eqx.filter(template, _is_array))


def _fill(template: PyTree, arrays: PyTree) -> PyTree:
    """The template with its array leaves replaced by the restored `arrays`."""
    return eqx.combine(arrays, eqx.filter(template, _is_array, inverse=True))


def _json_value(value: Any, name: str) -> Any:
    """A copy of a JSON value (an asynchronous save must not see later changes to it)."""
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name}: expected a JSON value, got {value!r} ({error})") from None


class CheckpointManager:
    """Training checkpoints in `directory`, one subdirectory per saved step.

    ```python
    with CheckpointManager("checkpoints/retrieval", max_to_keep=3) as checkpoints:
        if checkpoints.latest_step() is not None:
            restored = checkpoints.restore(model, opt_state)  # templates
            model, opt_state, start = restored.model, restored.opt_state, restored.step
        ...
        checkpoints.save(step, model, opt_state, data_position={"next_step": step})
    ```

    Every process of a multi-process job must make the same calls. `max_to_keep` keeps the
    newest steps (None: all of them). With `async_save`, `save` returns once the arrays are
    copied to host memory and writes them in the background; `wait` (or leaving the `with`
    block) waits for the writes and raises their errors.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        max_to_keep: int | None = 3,
        async_save: bool = False,
    ):
        if max_to_keep is not None and max_to_keep < 1:
            raise ValueError(f"max_to_keep: expected at least 1 or None, got {max_to_keep}")
        ocp = _orbax()
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.LatestN(max_to_keep),
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,  # what interrupted saves left behind
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def all_steps(self) -> list[int]:
        """The saved steps, oldest first (found on disk: complete saves only)."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        """The newest saved step (found on disk: complete saves only); None when none."""
        return self._manager.latest_step()

    def save(
        self,
        step: int,
        model: PyTree,
        opt_state: optax.OptState,
        *,
        data_position: Any = None,
    ) -> None:
        """Save the model's and optimiser state's arrays, and `data_position` (any JSON value,
        e.g. where the data stream stopped), as `step`: a step later than every saved one."""
        latest = self.latest_step()
        if step < 0 or (latest is not None and step <= latest):
            raise ValueError(
                f"step: expected a step after the latest saved one ({latest}) and at least 0, "
                f"got {step}"
            )
        metadata = _metadata(
            (model, opt_state),
            model,
            data_position=_json_value(data_position, "data_position"),
        )
        ocp = _orbax()
        arrays = {
            "model": eqx.filter(model, eqx.is_array),
            "opt_state": eqx.filter(opt_state, eqx.is_array),
        }
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(arrays), metadata=ocp.args.JsonSave(metadata)
            ),
        )

    def restore(
        self,
        model_template: PyTree,
        opt_state_template: optax.OptState,
        *,
        step: int | None = None,
        shardings: ShardingChoice = None,
    ) -> Checkpoint:
        """Restore `step` (the latest by default) into the structure of the templates.

        The templates give the static parts and the array shapes: a model built from its config
        and its optimiser state, or `eqx.filter_eval_shape` of them. Arrays are placed by
        `shardings`: one sharding for every array (e.g. `NamedSharding(mesh, PartitionSpec())`
        to replicate over a mesh), a function of each array's `jax.ShapeDtypeStruct`, or (None)
        each template leaf's own sharding, else the first local device. The devices need not be
        those that saved. The values are restored bit for bit.

        Raises a ValueError when there is no such step, when the checkpoint comes from another
        model config (naming each field that differs), when its arrays (table sizes, optimiser)
        differ from the templates', or when it is damaged: files missing or truncated, or an
        array or the metadata whose SHA-256 differs from the one taken at save (naming the
        array). Arrays restored split over several processes are not compared (see the module).
        """
        steps = self.all_steps()
        if step is None:
            if not steps:
                raise ValueError(
                    f"directory: expected a checkpoint, found none in {self.directory}"
                )
            step = steps[-1]
        elif step not in steps:
            raise ValueError(f"step: expected one of the saved steps {steps}, got {step}")
        where = f"checkpoint {self.directory} step {step}"
        ocp = _orbax()
        with _damage_reported(where):
            metadata = self._manager.restore(
                step, args=ocp.args.Composite(metadata=ocp.args.JsonRestore())
            ).metadata
        checksums = _check_metadata(
            metadata, model_template, (model_template, opt_state_template), where
        )
        target = {
            "model": _abstract(model_template, shardings),
            "opt_state": _abstract(opt_state_template, shardings),
        }
        with _damage_reported(where):
            arrays = self._manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
            ).state
        model = _fill(model_template, arrays["model"])
        opt_state = _fill(opt_state_template, arrays["opt_state"])
        _verify(checksums, (model, opt_state), where)
        return Checkpoint(
            model=model, opt_state=opt_state, step=step, data_position=metadata["data_position"]
        )

    def wait(self) -> None:
        """Wait for asynchronous saves to finish; raises their errors."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Wait for saves, then release Orbax's background resources."""
        self._manager.close()

    def __enter__(self) -> "CheckpointManager":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@contextlib.contextmanager
def _damage_reported(where: str) -> Iterator[None]:
    """Report what Orbax and tensorstore raise for missing, truncated or unreadable files as a
    damaged checkpoint: the templates were checked against the metadata before, so what fails
    here is the files. Orbax wraps some tensorstore errors in a bare `Exception`."""
    try:
        yield
    except Exception as error:
        # Tensorstore appends its whole JSON spec; the chained error keeps it.
        reason = "; ".join(
            str(cause).split(" [tensorstore_spec")[0].split(" See full TensorStore details")[0]
            for cause in (error, error.__cause__)
            if cause is not None
        )
        raise ValueError(
            f"{where} is damaged (files missing, truncated or unreadable): {reason}"
        ) from error


def export_model(directory: str | os.PathLike, model: PyTree, *, overwrite: bool = False) -> Path:
    """Write the model's arrays alone (no optimiser state) to `directory`, for serving.

    Written atomically (a temporary directory renamed when complete); an existing `directory`
    is an error unless `overwrite`. Returns the directory.
    """
    directory = Path(directory).absolute()
    if directory.exists() and not overwrite:
        raise ValueError(f"directory: expected a path that does not exist yet, got {directory}")
    ocp = _orbax()
    metadata = _metadata(model, model)
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
        checkpointer.save(
            directory,
            args=ocp.args.Composite(
                model=ocp.args.StandardSave(eqx.filter(model, eqx.is_array)),
                metadata=ocp.args.JsonSave(metadata),
            ),
            force=overwrite,
        )
    return directory


def load_exported_model(
    directory: str | os.PathLike, template: PyTree, *, sharding: ShardingChoice = None
) -> PyTree:
    """Read a model `export_model` wrote into the structure of `template` (a model of the same
    config, or `eqx.filter_eval_shape` of one), bit for bit.

    Arrays are placed by `sharding` as in `CheckpointManager.restore`; by default on the
    template's devices, else the first local device. Raises a ValueError for another model
    config (naming each field that differs), other arrays, or a damaged export (files missing
    or truncated, or a checksum that differs, as `CheckpointManager.restore`).
    """
    directory = Path(directory).absolute()
    if not directory.is_dir():
        raise ValueError(f"directory: expected an exported model, got {directory}")
    where = f"exported model {directory}"
    ocp = _orbax()
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
        with _damage_reported(where):
            metadata = checkpointer.restore(
                directory, args=ocp.args.Composite(metadata=ocp.args.JsonRestore())
            ).metadata
        checksums = _check_metadata(metadata, template, template, where)
        target = _abstract(template, sharding)
        with _damage_reported(where):
            arrays = checkpointer.restore(
                directory, args=ocp.args.Composite(model=ocp.args.StandardRestore(target))
            ).model
    model = _fill(template, arrays)
    _verify(checksums, model, where)
    return model
