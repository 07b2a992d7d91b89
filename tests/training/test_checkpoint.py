"""Orbax checkpoints: steps kept, bad arguments, serving exports, and restoring onto another
device count (this process's one device -> a mesh of 8 emulated devices -> one device).

The device count is fixed when jax initialises, so the 8-device half runs in a subprocess (this
file run as a module, `python -m tests.training.test_checkpoint DIRECTORY`) that restores what this
process saved, checks it, and saves it again from its sharded arrays for this process to check.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import phoenix_eqx as px
from phoenix_eqx.training import (
    CheckpointManager,
    export_model,
    init_optimizer,
    load_exported_model,
)

from ..helpers import tiny_ranker_config

DEVICES = 8
OPTIMIZER = optax.adam(1e-2)
ROOT = Path(__file__).resolve().parents[2]


def _templates():
    model = eqx.filter_eval_shape(px.PhoenixModel, tiny_ranker_config(), key=jax.random.key(0))
    return model, eqx.filter_eval_shape(init_optimizer, OPTIMIZER, model)


def _filled(template, seed: int):
    """The template with random arrays: every bit pattern matters to a bit-exact check, and
    no initialiser needs compiling."""
    rng = np.random.default_rng(seed)

    def fill(leaf: jax.ShapeDtypeStruct) -> jax.Array:
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            return jnp.asarray(rng.standard_normal(leaf.shape), leaf.dtype)
        return jnp.asarray(rng.integers(0, 1000, leaf.shape), leaf.dtype)

    return jax.tree.map(fill, template)


def _assert_bit_exact(expected, actual) -> None:
    for want, got in zip(jax.tree.leaves(expected), jax.tree.leaves(actual), strict=True):
        assert want.dtype == got.dtype
        np.testing.assert_array_equal(np.asarray(want), np.asarray(got))


MODEL, OPT_STATE = _filled(_templates(), seed=0)


def test_max_to_keep_keeps_the_newest_steps(tmp_path):
    with CheckpointManager(tmp_path, max_to_keep=2) as checkpoints:
        for step in (10, 20, 30):
            checkpoints.save(step, MODEL, OPT_STATE, data_position=[step, "shard-3"])
        assert checkpoints.all_steps() == [20, 30]
        restored = checkpoints.restore(*_templates(), step=20)
    assert restored.step == 20 and restored.data_position == [20, "shard-3"]
    _assert_bit_exact((MODEL, OPT_STATE), (restored.model, restored.opt_state))
    assert restored.model.config == MODEL.config  # static parts come from the template


def test_bad_steps_and_data_positions_are_named(tmp_path):
    with CheckpointManager(tmp_path) as checkpoints:
        checkpoints.save(5, MODEL, OPT_STATE)
        with pytest.raises(ValueError, match=r"step: expected a step after .* \(5\).*got 5"):
            checkpoints.save(5, MODEL, OPT_STATE)
        with pytest.raises(ValueError, match="data_position: expected a JSON value"):
            checkpoints.save(6, MODEL, OPT_STATE, data_position={"rng": np.random.default_rng()})
        with pytest.raises(ValueError, match=r"step: expected one of the saved steps \[5\], got 4"):
            checkpoints.restore(MODEL, OPT_STATE, step=4)
    with pytest.raises(ValueError, match="max_to_keep: expected at least 1 or None, got 0"):
        CheckpointManager(tmp_path, max_to_keep=0)


def test_an_asynchronous_save_is_complete_after_wait(tmp_path):
    data_position = {"losses": [1.0]}
    with CheckpointManager(tmp_path, async_save=True) as checkpoints:
        checkpoints.save(1, MODEL, OPT_STATE, data_position=data_position)
        data_position["losses"].append(0.5)  # after the call: not part of the checkpoint
        checkpoints.wait()
        restored = checkpoints.restore(MODEL, OPT_STATE)
    assert restored.data_position == {"losses": [1.0]}
    _assert_bit_exact((MODEL, OPT_STATE), (restored.model, restored.opt_state))


def test_an_export_holds_the_model_alone_and_loads_into_an_abstract_template(tmp_path):
    directory = export_model(tmp_path / "served", MODEL)
    template = eqx.filter_eval_shape(px.PhoenixModel, tiny_ranker_config(), key=jax.random.key(1))
    loaded = load_exported_model(directory, template)
    _assert_bit_exact(MODEL, loaded)
    devices = {device for leaf in jax.tree.leaves(loaded) for device in leaf.devices()}
    assert devices == {jax.local_devices()[0]}
    assert {path.name for path in directory.iterdir() if path.is_dir()} == {"model", "metadata"}
    with pytest.raises(ValueError, match="directory: expected a path that does not exist yet"):
        export_model(directory, MODEL)
    other = eqx.filter_eval_shape(
        px.PhoenixModel, tiny_ranker_config(num_layers=1), key=jax.random.key(0)
    )
    with pytest.raises(ValueError, match="model.num_layers: saved 2, expected 1"):
        load_exported_model(directory, other)
    with pytest.raises(ValueError, match="directory: expected an exported model"):
        load_exported_model(tmp_path / "missing", template)


def _row_sharding(mesh):
    """Rows split over the mesh where they divide evenly, else replicated."""
    from jax.sharding import NamedSharding, PartitionSpec

    def sharding(leaf: jax.ShapeDtypeStruct) -> NamedSharding:
        split = len(leaf.shape) > 0 and leaf.shape[0] % DEVICES == 0
        return NamedSharding(mesh, PartitionSpec("batch") if split else PartitionSpec())

    return sharding


def _worker(directory: Path) -> dict:
    """On 8 devices: restore step 1 sharded over a mesh and on one device, compare them, save
    the sharded arrays as step 2."""
    from phoenix_eqx import distributed

    mesh = distributed.make_mesh("batch")
    with CheckpointManager(directory) as checkpoints:
        sharded = checkpoints.restore(*_templates(), shardings=_row_sharding(mesh))
        single = checkpoints.restore(*_templates())
        arrays = jax.tree.leaves((sharded.model, sharded.opt_state))
        equal = all(
            np.array_equal(np.asarray(a), np.asarray(b))
            for a, b in zip(arrays, jax.tree.leaves((single.model, single.opt_state)), strict=True)
        )
        checkpoints.save(2, sharded.model, sharded.opt_state, data_position=sharded.data_position)
    return {
        "devices": len(jax.devices()),
        "sharded_equals_single_device": equal,
        "leaves_split_over_8": sum(
            len({shard.index for shard in array.addressable_shards}) == DEVICES for array in arrays
        ),
        "leaves": len(arrays),
        "data_position": sharded.data_position,
    }


def test_restores_onto_eight_devices_and_back_bit_for_bit(tmp_path):
    directory = tmp_path / "checkpoints"
    with CheckpointManager(directory) as checkpoints:
        checkpoints.save(1, MODEL, OPT_STATE, data_position={"next_step": 1})
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={DEVICES}"
    )
    env["JAX_PLATFORMS"] = "cpu"
    completed = subprocess.run(
        [sys.executable, "-m", "tests.training.test_checkpoint", str(directory)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report["devices"] == DEVICES
    assert report["sharded_equals_single_device"]
    assert 0 < report["leaves_split_over_8"] < report["leaves"]  # some split, some replicated
    assert report["data_position"] == {"next_step": 1}
    with CheckpointManager(directory) as checkpoints:
        restored = checkpoints.restore(*_templates(), step=2)  # saved by 8 devices
    _assert_bit_exact((MODEL, OPT_STATE), (restored.model, restored.opt_state))


if __name__ == "__main__":
    print(json.dumps(_worker(Path(sys.argv[1]))))
