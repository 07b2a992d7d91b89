"""Small models, inputs and context managers shared by the tests."""

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import jaxtyping
import numpy as np

import phoenix_eqx as px

GOLDEN_PATH = Path(__file__).parent / "golden" / "seed_golden_demo.npz"


# The smallest Recommender that trains: one layer over 8 history items, an epoch per stage.
TINY_FIT_OPTIONS = px.FitOptions(
    emb_size=8,
    key_size=4,
    num_heads=1,
    num_layers=1,
    history_seq_len=8,
    epochs=1,
    ranker_epochs=1,
    batch_size=32,
    # The co-occurrence prior off: choosing its weight is one more validation pass per fit
    # (tests/recommender/test_cooccurrence.py fits with it on).
    cooccurrence_weights=(0.0,),
    verbose=False,
)


def tiny_transformer(**overrides) -> px.TransformerConfig:
    values = dict(
        emb_size=16,
        key_size=8,
        num_q_heads=4,
        num_kv_heads=2,
        num_layers=2,
        widening_factor=2.0,
        attn_output_multiplier=0.25,
    )
    values.update(overrides)
    return px.TransformerConfig(**values)


def tiny_ranker_config(history: int = 6, candidates: int = 4, **overrides):
    return px.PhoenixModelConfig(
        model=tiny_transformer(**overrides),
        emb_size=16,
        history_seq_len=history,
        candidate_seq_len=candidates,
        fprop_dtype=jnp.float32,
        product_surface_vocab_size=4,
    )


def tiny_retrieval_config(history: int = 6, user_pooling: str = "mean", **overrides):
    return px.PhoenixRetrievalModelConfig(
        model=tiny_transformer(**overrides),
        emb_size=16,
        history_seq_len=history,
        fprop_dtype=jnp.float32,
        product_surface_vocab_size=4,
        user_pooling=user_pooling,
    )


_create_example_batch = eqx.filter_jit(px.create_example_batch)


def example_inputs(config, batch_size: int = 2, candidates: int = 4, seed: int = 0):
    return _create_example_batch(
        batch_size,
        config.emb_size,
        config.history_seq_len,
        candidates,
        product_surface_vocab_size=config.product_surface_vocab_size,
        key=jax.random.key(seed),
        table_size=50,
    )


def load_golden():
    golden = np.load(GOLDEN_PATH)
    batch = px.RecsysBatch(
        **{f: jnp.asarray(golden[f"batch/{f}"]) for f in px.RecsysBatch.__dataclass_fields__}
    )
    embeddings = px.RecsysEmbeddings(
        **{f: jnp.asarray(golden[f"emb/{f}"]) for f in px.RecsysEmbeddings.__dataclass_fields__}
    )
    return golden, batch, embeddings


@contextlib.contextmanager
def library_checks_only():
    """The suite's runtime type checker rejects most bad inputs first; turn it off to reach the
    library's own ValueErrors, which users without the checker see."""
    jaxtyping.config.update("jaxtyping_disable", True)
    try:
        yield
    finally:
        jaxtyping.config.update("jaxtyping_disable", False)


def run_on_cpu_devices(module: str, devices: int, xla_flags: str = "") -> dict:
    """Run `python -m module` in a fresh process that sees `devices` emulated CPU devices (the
    device count is fixed when JAX starts, so a test needing several cannot set it in-process)
    and return the JSON object its last output line prints."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices} {xla_flags}"
    )
    env["JAX_PLATFORMS"] = "cpu"
    completed = subprocess.run(
        [sys.executable, "-m", module],
        cwd=Path(__file__).resolve().parent.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


def full_sort_top_k(scores: np.ndarray, exclude: np.ndarray, k: int):
    """The oracle of serving's top-k: per row, the finite scores of columns >= 1 not in
    `exclude`, sorted by descending score with ties to the lower column, padded with -1 /
    -inf to `k`."""
    indices = np.full((scores.shape[0], k), -1)
    values = np.full((scores.shape[0], k), -np.inf, np.float32)
    for row in range(scores.shape[0]):
        usable = np.isfinite(scores[row])
        usable[0] = False
        usable[exclude[row][exclude[row] < scores.shape[1]]] = False  # a row's prefix may be given
        columns = np.flatnonzero(usable)
        order = columns[np.argsort(-scores[row, columns], kind="stable")][:k]
        indices[row, : order.size] = order
        values[row, : order.size] = scores[row, order]
    return indices, values
