"""Regression tests of known bugs: damaged checkpoints, fewer actions, config and dtype
validation, unseen sampling, NaN scores, resuming the CLI, console markup, import direction."""

import ast
import dataclasses
import re
import shutil
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import phoenix_eqx as px
from phoenix_eqx import compat
from phoenix_eqx.data import sample_unseen
from phoenix_eqx.training import (
    CheckpointManager,
    init_optimizer,
    roc_auc,
)

from ..helpers import example_inputs, library_checks_only, tiny_ranker_config

RANKER = px.PhoenixModel(tiny_ranker_config(), key=jax.random.key(0))
OPTIMIZER = optax.adam(1e-3)


def _opt_state(model):
    return init_optimizer(OPTIMIZER, model)


@pytest.fixture(scope="module")
def saved_checkpoint(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("checkpoint") / "ranker"
    with CheckpointManager(directory) as checkpoints:
        checkpoints.save(7, RANKER, _opt_state(RANKER), data_position={"next_step": 7})
    return directory


def _load(directory: Path, model=RANKER):
    with CheckpointManager(directory) as checkpoints:
        return checkpoints.restore(model, _opt_state(model))


def test_checkpoint_round_trip_is_bit_exact(saved_checkpoint):
    restored = _load(saved_checkpoint, px.PhoenixModel(tiny_ranker_config(), key=jax.random.key(5)))
    assert restored.step == 7 and restored.data_position == {"next_step": 7}
    for saved, loaded in zip(jax.tree.leaves(RANKER), jax.tree.leaves(restored.model), strict=True):
        np.testing.assert_array_equal(np.asarray(saved), np.asarray(loaded))


def _array_files(step_directory: Path) -> list[Path]:
    return [path for path in (step_directory / "state").rglob("d/*") if path.is_file()]


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize(
    "damage",
    [
        lambda step: [_truncate(path) for path in _array_files(step)],
        lambda step: [path.unlink() for path in _array_files(step)],
        lambda step: shutil.rmtree(step / "metadata"),
        lambda step: (step / "metadata" / "metadata").write_text("{not json"),
    ],
    ids=["array files truncated", "array files deleted", "metadata deleted", "metadata garbled"],
)
# Orbax's reads still in flight when one fails finish on a closed event loop.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_damaged_checkpoint_is_reported_as_damage(saved_checkpoint, tmp_path, damage):
    directory = tmp_path / "ranker"
    shutil.copytree(saved_checkpoint, directory)
    damage(directory / "7")
    with pytest.raises(ValueError, match=re.escape(f"checkpoint {directory} step 7 is damaged")):
        _load(directory)


def test_a_checkpoint_of_another_config_names_the_fields_that_differ(saved_checkpoint):
    config = tiny_ranker_config(num_layers=1, qk_norm=True)
    # Only the config is compared before the arrays: shapes are template enough.
    other = eqx.filter_eval_shape(px.PhoenixModel, config, key=jax.random.key(0))
    with pytest.raises(ValueError) as error:
        with CheckpointManager(saved_checkpoint) as checkpoints:
            checkpoints.restore(other, eqx.filter_eval_shape(_opt_state, other))
    message = str(error.value)
    assert "model.num_layers: saved 2, expected 1" in message
    assert "model.qk_norm: saved False, expected True" in message
    assert "emb_size" not in message  # only the fields that differ


def test_ranking_output_with_fewer_actions():
    probabilities = jnp.arange(2 * 3 * 4, dtype=jnp.float32).reshape(2, 3, 4) / 24
    output = px.RankingOutput(
        logits=probabilities,
        probabilities=probabilities,
        ranked_indices=jnp.zeros((2, 3), jnp.int32),
        candidate_valid=jnp.ones((2, 3), bool),
    )
    assert list(output.by_action) == list(px.ACTIONS[:4])
    np.testing.assert_array_equal(output.by_action["repost_score"], probabilities[..., 2])
    np.testing.assert_array_equal(output.action("photo_expand_score"), probabilities[..., 3])
    with pytest.raises(ValueError, match="'click_score' is action 4, beyond this model's 4"):
        output.action("click_score")
    with pytest.raises(ValueError, match=r"expected one of \('favorite_score'.*got 'likes'"):
        output.action("likes")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("widening_factor", 0.0, "widening_factor: expected > 0"),
        ("widening_factor", -2.0, "widening_factor: expected > 0"),
        ("widening_factor", 0.001, "widening_factor: expected > 0 with a non-empty FFN"),
        ("num_layers", 2.0, r"num_layers: expected an int, got 2.0 \(float\)"),
        ("num_q_heads", True, r"num_q_heads: expected an int, got True \(bool\)"),
        ("key_size", "8", r"key_size: expected an int, got '8' \(str\)"),
        ("attn_output_multiplier", "0.5", "attn_output_multiplier: expected a number"),
    ],
)
def test_transformer_config_rejects_bad_values(field, value, message):
    with library_checks_only(), pytest.raises(ValueError, match=message):
        px.TransformerConfig(
            **{
                "emb_size": 16,
                "key_size": 8,
                "num_q_heads": 2,
                "num_kv_heads": 2,
                "num_layers": 1,
                field: value,
            }
        )


@library_checks_only()
def test_model_configs_take_numpy_integers_and_reject_other_types():
    """Without the suite's runtime type checker, as users run: the configs' own checks."""
    transformer = px.TransformerConfig(16, 8, 2, 2, num_layers=np.int64(1))
    assert transformer.num_layers == 1 and type(transformer.num_layers) is int
    config = px.PhoenixRetrievalModelConfig(
        transformer, np.int32(16), history_seq_len=np.uint8(4), num_actions=np.int64(3)
    )
    assert (config.emb_size, config.history_seq_len, config.num_actions) == (16, 4, 3)
    assert config == px.PhoenixRetrievalModelConfig(
        transformer, 16, history_seq_len=4, num_actions=3
    )
    for field, value in (("history_seq_len", 4.0), ("candidate_seq_len", False)):
        with pytest.raises(ValueError, match=f"{field}: expected an int"):
            px.PhoenixModelConfig(transformer, 16, **{field: value})
    with pytest.raises(ValueError, match="hash_config: expected a HashConfig, got NoneType"):
        px.PhoenixModelConfig(transformer, 16, hash_config=None)
    with pytest.raises(ValueError, match="num_item_hashes: expected an int"):
        px.HashConfig(num_item_hashes=1.5)


def test_both_model_configs_share_one_base():
    base_fields = dataclasses.fields(px.config.PhoenixConfig)
    assert dataclasses.fields(px.PhoenixModelConfig) == base_fields
    # The retrieval model adds only how its user tower pools.
    retrieval_fields = dataclasses.fields(px.PhoenixRetrievalModelConfig)
    assert retrieval_fields[: len(base_fields)] == base_fields
    assert [field.name for field in retrieval_fields[len(base_fields) :]] == ["user_pooling"]


@pytest.mark.parametrize(
    ("field", "convert", "message"),
    [
        ("user_hashes", lambda x: x.astype(jnp.float32), "batch.user_hashes: expected an integer"),
        (
            "candidate_post_hashes",
            lambda x: x.astype(jnp.float32),
            "batch.candidate_post_hashes: expected an integer dtype, got float32",
        ),
        (
            "history_product_surface",
            lambda x: x.astype(jnp.float32),
            "batch.history_product_surface: expected an integer",
        ),
        (
            "history_actions",
            lambda x: x.astype(jnp.int32),
            "batch.history_actions: expected a floating dtype .*, got int32",
        ),
        (
            "history_actions",
            lambda x: x.at[0, 0, 0].set(0.5),
            r"batch.history_actions: expected values in \{0, 1\}, got 1 others, e.g. \[0.5\]",
        ),
    ],
)
def test_inputs_of_the_wrong_dtype(field, convert, message):
    batch, embeddings = example_inputs(RANKER.config)
    with library_checks_only(), pytest.raises(ValueError, match=message):
        RANKER(dataclasses.replace(batch, **{field: convert(getattr(batch, field))}), embeddings)


def test_action_values_are_not_checked_when_traced():
    """Under `jit` the values are unknown: the check is skipped (tracing must not fail)."""
    batch, embeddings = example_inputs(RANKER.config)
    halves = dataclasses.replace(batch, history_actions=batch.history_actions / 2)
    logits = eqx.filter_eval_shape(lambda m, b, e: m(b, e), RANKER, halves, embeddings)
    assert logits.shape == (2, 4, RANKER.config.num_actions)


def test_sample_unseen_never_returns_a_seen_item():
    num_items = 200
    seen = np.zeros((3, num_items + 1), bool)
    seen[:, 0] = True
    seen[1, :-3] = True  # user 1 has seen all but the last 3 items
    users = np.array([0, 1, 2, 1])
    for seed in range(20):
        items = sample_unseen(np.random.default_rng(seed), seen, users, 3)
        assert not seen[users[:, None], items].any()
        assert set(items[1]) <= {num_items - 2, num_items - 1, num_items}
    with pytest.raises(ValueError, match="count: expected at most the 3 items user 1 has not seen"):
        sample_unseen(np.random.default_rng(0), seen, users, 4)


def test_roc_auc_rejects_nan_scores():
    with pytest.raises(ValueError, match="scores: expected no NaN, got 1"):
        roc_auc(np.array([0.2, np.nan, 0.1]), np.array([0.0, 1.0, 0.0]))


def test_the_data_layer_does_not_import_training():
    for module in Path(px.data.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert "training" not in (node.module or ""), (module.name, node.module)


def test_seed_loader_builds_no_concrete_template(monkeypatch):
    """The template only gives shapes: it is built under `eval_shape`, with a traced key."""
    keys = []

    def recording(config, *, key):
        keys.append(key)
        return px.PhoenixModel(config, key=key)

    monkeypatch.setattr(compat, "PhoenixModel", recording)
    exported = compat.ranker_to_haiku(RANKER)
    restored = compat.ranker_from_haiku(exported, RANKER.config)
    assert len(keys) == 1 and isinstance(keys[0], jax.core.Tracer)
    for a, b in zip(jax.tree.leaves(RANKER), jax.tree.leaves(restored), strict=True):
        np.testing.assert_array_equal(a, b)
