"""Sharded corpus top-k on 8 emulated CPU devices, against the unsharded reference.

The device count is fixed when JAX starts, and other test modules start it in this process, so
the check runs in a fresh interpreter with XLA_FLAGS set.
"""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh
from phoenix_eqx.kernels import sharded_corpus_top_k
from phoenix_eqx.kernels.corpus_top_k import corpus_top_k_reference

SCRIPT = textwrap.dedent(
    """
    import numpy as np
    import jax
    import jax.numpy as jnp
    from jax.sharding import Mesh

    from phoenix_eqx.kernels import sharded_corpus_top_k
    from phoenix_eqx.kernels.corpus_top_k import corpus_top_k_reference

    assert jax.device_count() == 8, jax.devices()
    mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "items"))
    rng = np.random.default_rng(0)
    checked = 0
    for num_items, k, mask_kind, implementation in [
        (64, 5, "none", "xla"),
        (64, 40, "random", "xla"),  # k above the 16 items of a shard
        (128, 128, "random", "xla"),  # k == num_items, so the tail is -1 / -inf
        (256, 9, "few", "xla"),
        (256, 30, "all", "xla"),
    ]:
        # Few distinct values: ties across shards must go to the lower global index.
        corpus = jnp.asarray(rng.integers(-1, 2, (num_items, 64)), jnp.bfloat16)
        queries = jnp.asarray(rng.integers(-1, 2, (3, 64)), jnp.float32)
        mask = {
            "none": None,
            "random": jnp.asarray(rng.random(num_items) < 0.5),
            "few": jnp.asarray(np.isin(np.arange(num_items), [3, 77, 200])),
            "all": jnp.zeros(num_items, bool),
        }[mask_kind]
        got = sharded_corpus_top_k(
            queries, corpus, k, mesh=mesh, axis_name="items", corpus_mask=mask,
            implementation=implementation,
        )
        want = corpus_top_k_reference(queries, corpus, k, mask)
        np.testing.assert_array_equal(np.asarray(got.indices), np.asarray(want.indices))
        np.testing.assert_array_equal(np.asarray(got.scores), np.asarray(want.scores))
        checked += 1
    print("checked", checked)
    """
)


def test_sharded_matches_unsharded_on_8_devices():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    env["JAX_PLATFORMS"] = "cpu"
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "checked 5" in result.stdout


def test_rejects_bad_arguments():
    mesh = Mesh(np.array(jax.devices()[:1]), ("items",))
    queries = jnp.ones((1, 64), jnp.float32)
    with pytest.raises(ValueError, match="axis_name"):
        sharded_corpus_top_k(queries, jnp.ones((4, 64)), 1, mesh=mesh, axis_name="other")
    mesh = Mesh(np.array(jax.devices()[:1]), ("items",))
    with pytest.raises(ValueError, match="k: expected"):
        sharded_corpus_top_k(queries, jnp.ones((4, 64)), 5, mesh=mesh, axis_name="items")


@pytest.mark.gpu
def test_sharded_kernel_path_on_one_gpu():
    """The kernel inside shard_map (the CPU interpreter cannot run it there)."""
    mesh = Mesh(np.array(jax.devices()[:1]), ("items",))
    rng = np.random.default_rng(0)
    corpus = jnp.asarray(rng.integers(-2, 3, (100_000, 128)), jnp.bfloat16)
    queries = jnp.asarray(rng.integers(-2, 3, (5, 128)), jnp.float32)
    mask = jnp.asarray(rng.random(100_000) < 0.7)
    got = sharded_corpus_top_k(
        queries,
        corpus,
        50,
        mesh=mesh,
        axis_name="items",
        corpus_mask=mask,
        implementation="pallas",
    )
    want = corpus_top_k_reference(queries, corpus, 50, mask)
    np.testing.assert_array_equal(np.asarray(got.indices), np.asarray(want.indices))
    np.testing.assert_array_equal(np.asarray(got.scores), np.asarray(want.scores))
