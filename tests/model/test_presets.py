"""Production presets: X's production shapes, and each production option changes what it should
and nothing else (checked at test scale, each option against the preset with it undone)."""

import dataclasses
import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import phoenix_eqx as px
from phoenix_eqx import presets, serving
from phoenix_eqx.inference import encode_users, rank

TOLERANCE = 1e-4
HISTORY = 8


@functools.cache
def ranker(**overrides) -> px.PhoenixModel:
    """The small production ranker, with some options undone; one key, so equal weights."""
    config = presets.small_production_ranker_config(**overrides)
    return px.PhoenixModel(config, key=jax.random.key(0))


@functools.cache
def inputs(history: int = HISTORY, full_history: bool = False, emb_size: int = 40):
    config = presets.small_production_ranker_config()
    batch, embeddings = px.create_example_batch(
        2,
        emb_size,
        history,
        6,
        product_surface_vocab_size=config.product_surface_vocab_size,
        key=jax.random.key(1),
        table_size=50,
    )
    if full_history:
        post = batch.history_post_hashes
        batch = dataclasses.replace(batch, history_post_hashes=jnp.where(post == 0, 1, post))
    return batch, embeddings


def pad_history(batch, embeddings, extra: int):
    """The same users with `extra` more padding slots after their history."""

    def fields(tree):
        return [
            getattr(tree, f) for f in type(tree).__dataclass_fields__ if f.startswith("history")
        ]

    def pad(x):
        return jnp.pad(x, [(0, 0), (0, extra)] + [(0, 0)] * (x.ndim - 2))

    return tuple(
        eqx.tree_at(fields, tree, [pad(x) for x in fields(tree)]) for tree in (batch, embeddings)
    )


def logits(model, batch, embeddings) -> np.ndarray:
    return np.asarray(rank(model, batch, embeddings).logits)


def test_production_presets_have_the_spec_shapes():
    ranker_config = presets.production_ranker_config()
    retrieval_config = presets.production_retrieval_config()
    for config, emb, q_heads in ((ranker_config, 2560, 20), (retrieval_config, 1024, 16)):
        model = config.model
        assert (config.emb_size, model.emb_size, model.num_q_heads, model.num_kv_heads) == (
            emb,
            emb,
            q_heads,
            4,
        )
        assert (model.key_size, model.num_layers, config.history_seq_len) == (128, 8, 1023)
        assert (model.history_attention, model.candidate_positions) == ("bidirectional", "shared")
        assert model.qk_norm and model.logit_cap is None
        assert config.fprop_dtype == jnp.bfloat16
    assert ranker_config.candidate_seq_len == 1400
    assert presets.production_ranker_config(candidate_seq_len=64).candidate_seq_len == 64
    # Parameter shapes of the full-size ranker, without allocating it.
    shapes = eqx.filter_eval_shape(px.PhoenixModel, ranker_config, key=jax.random.key(0))
    attention = shapes.transformer.layers.attention
    assert attention.query.weight.shape == (8, 2560, 20 * 128)
    assert attention.key.weight.shape == attention.value.weight.shape == (8, 2560, 4 * 128)
    assert attention.query_norm.scale.shape == (8, 20 * 128)
    assert attention.key_norm.scale.shape == (8, 4 * 128)


def test_small_presets_keep_every_production_option():
    for small, full in (
        (presets.small_production_ranker_config(), presets.production_ranker_config()),
        (presets.small_production_retrieval_config(), presets.production_retrieval_config()),
    ):
        for option, value in presets.PRODUCTION_OPTIONS.items():
            assert getattr(small.model, option) == getattr(full.model, option) == value
        ratio = small.model.num_q_heads // small.model.num_kv_heads
        assert ratio == full.model.num_q_heads // full.model.num_kv_heads


def test_bidirectional_history_changes_only_the_prefix_rows():
    production, causal = ranker(), ranker(history_attention="causal")
    batch, embeddings = inputs()
    # With the prefix reduced to the user token the two masks are the same.
    short = inputs(history=0)
    np.testing.assert_allclose(logits(production, *short), logits(causal, *short), atol=TOLERANCE)
    # With history, the user token sees the last history item only when bidirectional: its
    # key at layer 2 (cached by serving) moves when that item changes.
    changed = dataclasses.replace(
        embeddings, history_post_embeddings=embeddings.history_post_embeddings.at[:, 4].add(1.0)
    )
    for model, should_move in ((production, True), (causal, False)):
        before = serving.encode_prefix(model, batch, embeddings).keys[1, :, 0]
        after = serving.encode_prefix(model, batch, changed).keys[1, :, 0]
        assert bool(np.max(np.abs(np.asarray(after - before))) > 1e-3) == should_move
    assert (
        np.max(np.abs(logits(production, batch, embeddings) - logits(causal, batch, embeddings)))
        > 1e-3
    )


def test_shared_positions_change_only_where_candidates_and_padding_sit():
    production, sequential = ranker(), ranker(candidate_positions="sequential")
    # With no history padding the prefix positions agree and candidate 0 sits at the same
    # position either way; the other candidates move.
    full = inputs(full_history=True)
    shared_logits, sequential_logits = logits(production, *full), logits(sequential, *full)
    np.testing.assert_allclose(shared_logits[:, 0], sequential_logits[:, 0], atol=TOLERANCE)
    assert np.max(np.abs(shared_logits[:, 1:] - sequential_logits[:, 1:])) > 1e-3
    # More padding after the history: shared (right-aligned) scores stay, sequential ones move.
    batch, embeddings = inputs()
    padded = pad_history(batch, embeddings, 3)
    np.testing.assert_allclose(
        logits(production, *padded), logits(production, batch, embeddings), atol=TOLERANCE
    )
    moved = logits(sequential, *padded) - logits(sequential, batch, embeddings)
    assert np.max(np.abs(moved)) > 1e-3


def _scale_qk(model: px.PhoenixModel, factor: float) -> px.PhoenixModel:
    return eqx.tree_at(
        lambda m: (
            m.transformer.layers.attention.query.weight,
            m.transformer.layers.attention.key.weight,
        ),
        model,
        replace_fn=lambda w: w * factor,
    )


def test_qk_norm_makes_scores_invariant_to_the_scale_of_q_and_k():
    production, plain = ranker(), ranker(qk_norm=False)
    batch, embeddings = inputs()
    base = logits(production, batch, embeddings)
    np.testing.assert_allclose(
        logits(_scale_qk(production, 3.0), batch, embeddings), base, atol=TOLERANCE
    )
    moved = logits(_scale_qk(plain, 3.0), batch, embeddings) - logits(plain, batch, embeddings)
    assert np.max(np.abs(moved)) > 1e-3
    # qk_norm adds exactly the two norms' scales; every other parameter is shared.
    leaves = lambda m: {  # noqa: E731
        jax.tree_util.keystr(path): leaf.shape
        for path, leaf in jax.tree_util.tree_leaves_with_path(eqx.filter(m, eqx.is_array))
    }
    extra = set(leaves(production)) - set(leaves(plain))
    assert extra == {
        ".transformer.layers.attention.query_norm.scale",
        ".transformer.layers.attention.key_norm.scale",
    }
    assert all(leaves(production)[name] == shape for name, shape in leaves(plain).items())


def test_logit_cap_is_off():
    production = ranker()
    batch, embeddings = inputs()
    base = logits(production, batch, embeddings)
    # A cap too large to bite changes nothing; a small one does.
    np.testing.assert_allclose(
        logits(ranker(logit_cap=1e6), batch, embeddings), base, atol=TOLERANCE
    )
    assert np.max(np.abs(logits(ranker(logit_cap=0.1), batch, embeddings) - base)) > 1e-3


def test_grouped_query_heads_equal_repeated_key_value_heads():
    grouped = ranker()  # 5 q heads share 1 kv head
    config = grouped.config.model
    full = ranker(num_kv_heads=config.num_q_heads)
    attention = grouped.transformer.layers.attention
    repeats = config.num_q_heads // config.num_kv_heads

    def repeat(weight):  # [..., kv * key]: each kv head's columns repeated for its q heads
        heads = weight.reshape(*weight.shape[:-1], config.num_kv_heads, config.key_size)
        return jnp.repeat(heads, repeats, axis=-2).reshape(*weight.shape[:-1], -1)

    full = eqx.tree_at(
        lambda m: (
            m.transformer.layers.attention.key.weight,
            m.transformer.layers.attention.value.weight,
            m.transformer.layers.attention.key_norm.scale,
        ),
        full,
        (
            repeat(attention.key.weight),
            repeat(attention.value.weight),
            repeat(attention.key_norm.scale),
        ),
    )
    batch, embeddings = inputs()
    np.testing.assert_allclose(
        logits(full, batch, embeddings), logits(grouped, batch, embeddings), atol=TOLERANCE
    )


def test_retrieval_preset_user_vectors_ignore_history_padding():
    config = presets.small_production_retrieval_config()
    model = px.PhoenixRetrievalModel(config, key=jax.random.key(2))
    batch, embeddings = inputs(emb_size=config.emb_size)
    users, _ = encode_users(model, batch, embeddings)
    np.testing.assert_allclose(np.linalg.norm(users, axis=-1), 1.0, atol=1e-5)
    padded_users, _ = encode_users(model, *pad_history(batch, embeddings, 3))
    np.testing.assert_allclose(padded_users, users, atol=TOLERANCE)
