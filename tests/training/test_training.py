"""Training end to end on synthetic data, jitted steps, checkpoints, gradients through attention."""

import json
import os

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from phoenix_eqx import (
    HashConfig,
    PhoenixModelConfig,
    PhoenixRetrievalModelConfig,
    TransformerConfig,
)
from phoenix_eqx.config import transformer_config
from phoenix_eqx.data import RankingStream, RetrievalStream, leave_last_out, synthetic_interactions
from phoenix_eqx.training import (
    CheckpointManager,
    TrainableRanker,
    TrainableRetriever,
    evaluate_ranking,
    evaluate_retrieval,
    init_optimizer,
    make_eval_step,
    make_train_step,
    ranking_objective,
    retrieval_objective,
    retrieval_scores,
    warm_start_ranker,
)
from phoenix_eqx.transformer import prefix_positions

from ..helpers import example_inputs, library_checks_only, tiny_retrieval_config, tiny_transformer

EMB = 16


def _transformer(**overrides) -> TransformerConfig:
    sizes = dict(emb_size=EMB, key_size=8, num_q_heads=2, num_kv_heads=1, num_layers=1)
    return transformer_config(**{**sizes, **overrides})


def _hash_config(data) -> HashConfig:
    return HashConfig(
        data.user_hashes.shape[1], data.post_hashes.shape[1], data.author_hashes.shape[1]
    )


def _retriever(data, history_seq_len=8, seed=0, **overrides) -> TrainableRetriever:
    config = PhoenixRetrievalModelConfig(
        model=_transformer(**overrides),
        emb_size=EMB,
        history_seq_len=history_seq_len,
        candidate_seq_len=1,
        fprop_dtype=jnp.float32,
        hash_config=_hash_config(data),
        product_surface_vocab_size=data.num_surfaces,
    )
    return TrainableRetriever(
        config,
        data.num_user_rows,
        data.num_post_rows,
        data.num_author_rows,
        key=jax.random.key(seed),
    )


def _ranker(data, history_seq_len=8, candidates=4, seed=0) -> TrainableRanker:
    config = PhoenixModelConfig(
        model=_transformer(),
        emb_size=EMB,
        history_seq_len=history_seq_len,
        candidate_seq_len=candidates,
        fprop_dtype=jnp.float32,
        hash_config=_hash_config(data),
        product_surface_vocab_size=data.num_surfaces,
    )
    return TrainableRanker(
        config,
        data.num_user_rows,
        data.num_post_rows,
        data.num_author_rows,
        key=jax.random.key(seed),
    )


@pytest.fixture(scope="module")
def split():
    return leave_last_out(synthetic_interactions(num_users=300, num_items=100, seed=0))


def _train(model, stream, objective, steps, learning_rate=1e-2):
    optimizer = optax.adam(learning_rate)
    opt_state = init_optimizer(optimizer, model)
    step = make_train_step(objective, optimizer)
    losses = []
    for index in range(steps):
        model, opt_state, aux = step(model, opt_state, stream(index))
        losses.append(float(aux["loss"]))
    return model, opt_state, losses


def test_retrieval_learns_the_planted_structure(split):
    """Held-out Recall@10 far above a random scorer's (10 / unseen items ~ 0.12)."""
    users = split.test_users
    model = _retriever(split.data)
    before = evaluate_retrieval(retrieval_scores(model, split, users), split, users)
    stream = RetrievalStream(split, 64, 8, num_negatives=32, seed=0)
    model, _, losses = _train(model, stream, retrieval_objective, 150)
    after = evaluate_retrieval(retrieval_scores(model, split, users), split, users)
    chance = np.mean(10 / (split.data.num_items - split.train_lengths[users]))
    assert np.mean(losses[-20:]) < np.mean(losses[:20])
    assert after["recall@10"] > 2.5 * chance, (before, after, chance)
    assert after["ndcg@10"] > before["ndcg@10"]
    assert float(model.temperature) != pytest.approx(0.1)  # the temperature is learned


def test_ranking_beats_popularity_on_held_out_items():
    """Held-out items among unseen ones: popularity alone gets a ROC-AUC of ~0.63 on this
    data, a perfect model ~0.8; three epochs put the ranker clearly above popularity (~0.73 to
    0.78 across seeds), so it has learned the users' tastes, not only what is popular."""
    split = leave_last_out(synthetic_interactions(num_users=300, num_items=100, sharpness=8.0))
    model = _ranker(split.data)
    stream = RankingStream(split, 64, 8, 4, seed=0)
    model, _, losses = _train(model, stream, ranking_objective, 250)
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])
    results = evaluate_ranking(model, split, split.test_users, seed=0)
    for action in ("favorite_score", "click_score"):
        ranker = results["phoenix_ranker"][action]["roc_auc"]
        popularity = results["popularity"][action]["roc_auc"]
        assert ranker > popularity + 0.03, (action, ranker, popularity)


def test_eval_step_matches_the_training_objective(split):
    model = _ranker(split.data)
    example = RankingStream(split, 16, 8, 4, seed=1)(0)
    aux = make_eval_step(ranking_objective)(model, example)
    loss, _ = ranking_objective(model, example)
    assert float(aux["loss"]) == pytest.approx(float(loss), rel=1e-5)


def test_train_step_works_with_any_optax_optimizer(split):
    stream = RetrievalStream(split, 32, 8, seed=0)
    for optimizer in (
        optax.sgd(0.1),
        optax.chain(optax.clip_by_global_norm(1.0), optax.lion(1e-4)),
    ):
        model = _retriever(split.data)
        opt_state = init_optimizer(optimizer, model)
        new_model, _, aux = make_train_step(retrieval_objective, optimizer)(
            model, opt_state, stream(0)
        )
        assert np.isfinite(float(aux["loss"])) and float(aux["grad_norm"]) > 0
        changed = jax.tree.map(
            lambda a, b: bool(jnp.any(a != b)),
            eqx.filter(model, eqx.is_array),
            eqx.filter(new_model, eqx.is_array),
        )
        assert all(jax.tree.leaves(changed))


def _run(step, model, opt_state, stream, start, stop):
    losses = []
    for index in range(start, stop):
        model, opt_state, aux = step(model, opt_state, stream(index))
        losses.append(float(aux["loss"]))
    return model, opt_state, losses


def test_checkpoint_resume_gives_the_same_losses(split, tmp_path):
    optimizer = optax.adamw(3e-3)
    step = make_train_step(retrieval_objective, optimizer)
    stream = RetrievalStream(split, 32, 8, num_negatives=8, seed=3)
    model = _retriever(split.data)
    _, _, straight = _run(step, model, init_optimizer(optimizer, model), stream, 0, 6)

    stopped, opt_state, first = _run(step, model, init_optimizer(optimizer, model), stream, 0, 3)
    directory = tmp_path / "retrieval"
    with CheckpointManager(directory) as checkpoints:
        checkpoints.save(3, stopped, opt_state, data_position={"next_step": 3})
    assert os.listdir(directory) == ["3"]  # no temporary directory left behind

    fresh = _retriever(split.data, seed=99)
    with CheckpointManager(directory) as checkpoints:
        restored = checkpoints.restore(fresh, init_optimizer(optimizer, fresh))
    assert restored.step == 3 and restored.data_position == {"next_step": 3}
    for a, b in zip(
        jax.tree.leaves((stopped, opt_state)),
        jax.tree.leaves((restored.model, restored.opt_state)),
        strict=True,
    ):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    _, _, resumed = _run(step, restored.model, restored.opt_state, stream, 3, 6)
    assert first + resumed == straight


def test_an_interrupted_save_never_shadows_a_complete_one(split, tmp_path):
    optimizer = optax.sgd(0.1)
    model = _retriever(split.data)
    opt_state = init_optimizer(optimizer, model)
    directory = tmp_path / "model"
    with CheckpointManager(directory) as checkpoints:
        checkpoints.save(1, model, opt_state)
    # What a crash during Orbax's save of step 2 leaves: a temporary directory, never renamed.
    unfinished = directory / "2.orbax-checkpoint-tmp-1700000000000000"
    (unfinished / "state").mkdir(parents=True)
    (unfinished / "state" / "manifest.ocdbt").write_bytes(b"partial")
    with CheckpointManager(directory) as checkpoints:
        assert checkpoints.latest_step() == 1
        assert checkpoints.restore(model, opt_state).step == 1
        checkpoints.save(2, model, opt_state)  # deletes the leftover first
    assert sorted(os.listdir(directory)) == ["1", "2"]


def test_checkpoint_from_another_config_is_rejected(split, tmp_path):
    optimizer = optax.adam(1e-3)
    model = _retriever(split.data)
    directory = tmp_path / "model"
    with CheckpointManager(directory) as checkpoints:
        checkpoints.save(0, model, init_optimizer(optimizer, model))
        other = _retriever(split.data, num_layers=2)
        with pytest.raises(ValueError, match="model.num_layers: saved 1, expected 2"):
            checkpoints.restore(other, init_optimizer(optimizer, other))
        with pytest.raises(ValueError, match="arrays differ"):
            checkpoints.restore(model, init_optimizer(optax.sgd(0.1), model))
    with CheckpointManager(tmp_path / "empty") as checkpoints:
        with pytest.raises(ValueError, match="directory: expected a checkpoint, found none"):
            checkpoints.restore(model, init_optimizer(optimizer, model))


@library_checks_only()
def test_retrieval_objective_needs_exactly_one_candidate(split):
    model = _retriever(split.data)
    example = RetrievalStream(split, 8, 8, seed=0)(0)
    batch = example.batch
    doubled = eqx.tree_at(
        lambda b: (b.candidate_post_hashes, b.candidate_author_hashes, b.candidate_product_surface),
        batch,
        (
            jnp.repeat(batch.candidate_post_hashes, 2, axis=1),
            jnp.repeat(batch.candidate_author_hashes, 2, axis=1),
            jnp.repeat(batch.candidate_product_surface, 2, axis=1),
        ),
    )
    with pytest.raises(ValueError, match="one candidate"):
        retrieval_objective(model, eqx.tree_at(lambda e: e.batch, example, doubled))


def test_kernel_and_reference_agree_on_ranker_logits_and_gradients():
    """The Pallas kernel (Mosaic GPU interpreter on the CPU) and the XLA reference give the
    same logits and the same gradients for every parameter of a tiny bf16 ranker."""
    from jax.experimental.pallas import mosaic_gpu as plgpu

    data = synthetic_interactions(num_users=4, num_items=10, interactions_per_user=5, seed=1)
    split = leave_last_out(data)
    example = RankingStream(split, 2, 3, 2, seed=0)(0)
    gradients, logits = {}, {}
    for implementation in ("xla", "pallas"):
        config = PhoenixModelConfig(
            model=_transformer(
                emb_size=32,
                key_size=64,
                num_q_heads=2,
                num_kv_heads=1,
                attention_implementation=implementation,
            ),
            emb_size=32,
            history_seq_len=3,
            candidate_seq_len=2,
            fprop_dtype=jnp.bfloat16,
            hash_config=_hash_config(data),
            product_surface_vocab_size=data.num_surfaces,
        )
        model = TrainableRanker(
            config,
            data.num_user_rows,
            data.num_post_rows,
            data.num_author_rows,
            key=jax.random.key(0),
        )
        grad_fn = eqx.filter_jit(eqx.filter_grad(lambda m, e: ranking_objective(m, e)[0]))
        with plgpu.force_gpu_interpret_mode(plgpu.InterpretGPUParams()):
            gradients[implementation] = grad_fn(model, example)
            logits[implementation] = eqx.filter_jit(lambda m, b: m(b))(model, example.batch)
    valid = np.asarray(example.batch.candidate_valid)
    np.testing.assert_allclose(
        np.asarray(logits["pallas"], np.float32)[valid],
        np.asarray(logits["xla"], np.float32)[valid],
        atol=3e-2,  # bf16 logits of order 1: a few bf16 ulps
    )
    for reference, kernel in zip(
        jax.tree.leaves(gradients["xla"]), jax.tree.leaves(gradients["pallas"]), strict=True
    ):
        scale = float(jnp.max(jnp.abs(reference))) + 1e-6
        # bf16 attention: the two paths round in different places.
        np.testing.assert_allclose(np.asarray(kernel), np.asarray(reference), atol=0.05 * scale)


def test_the_leave_two_out_protocol_evaluates_the_test_items_once(tmp_path, monkeypatch):
    from phoenix_eqx import train

    calls = []
    evaluate = train.recommender_test_per_user

    def counted(rec, split, use_ranker, ks):
        calls.append(use_ranker)
        return evaluate(rec, split, use_ranker, ks)

    monkeypatch.setattr(train, "recommender_test_per_user", counted)
    metrics_path = tmp_path / "metrics.json"
    argv = [
        "--dataset=synthetic",
        f"--metrics-json={metrics_path}",
        "--emb-size=8",
        "--key-size=4",
        "--num-heads=1",
        "--num-layers=1",
        "--history-seq-len=8",
        "--epochs=1",
        "--ranker-epochs=0",  # retrieval alone keeps the test fast
        "--budget=20",
    ]
    report = train.main(argv)
    assert calls == [False]  # the reported row's test items, once
    assert json.loads(metrics_path.read_text()) == json.loads(json.dumps(report))
    assert report["protocol"]["name"] == "leave-two-out"
    sizes = report["sizes"]
    assert sizes["fit_interactions"] == sizes["interactions"] - sizes["evaluated_users"]
    assert report["options"]["time_budget_s"] == 20.0
    rows = report["results"]
    assert set(rows) == {"popularity", "recent item-kNN", "EASE", "Phoenix retrieval alone"}
    for row_name, row in rows.items():
        # Retrieval alone also at what it hands the ranker: num_retrieved, capped at 100 items.
        ks = (10, 20, 50, 100) if row_name == "Phoenix retrieval alone" else (10, 20, 50)
        for mode in ("seen_excluded", "seen_included"):
            assert set(row["test"][mode]) == {
                f"{name}@{k}" for name in ("hit_rate", "ndcg") for k in ks
            }
    assert rows["Phoenix retrieval alone"]["validation"] == report["validation"]["retrieval"]
    assert [entry["stage"] for entry in report["validation_history"]] == ["retrieval"]
    assert {"date", "command", "machine", "seconds", "fit_seconds"} <= set(report)


def test_warm_started_ranker_encodes_the_history_like_the_retriever():
    retrieval_config = tiny_retrieval_config(6)
    ranking_config = PhoenixModelConfig(
        model=tiny_transformer(candidate_positions="shared"),
        emb_size=16,
        history_seq_len=6,
        fprop_dtype=jnp.float32,
        product_surface_vocab_size=4,
    )
    retriever = TrainableRetriever(retrieval_config, 50, 50, 50, key=jax.random.key(0))
    ranker = TrainableRanker(ranking_config, 50, 50, 50, key=jax.random.key(1))
    warm = warm_start_ranker(ranker, retriever)
    batch, _ = example_inputs(ranking_config, batch_size=3, candidates=2, seed=3)
    # Left-aligned histories (as Recommender builds them) of 6, 3 and 0 items: the two position
    # modes then give the same distances between valid tokens, so rotary attention agrees.
    keep = (jnp.arange(6)[None, :] < jnp.array([6, 3, 0])[:, None])[..., None]
    batch = eqx.tree_at(
        lambda b: b.history_post_hashes,
        batch,
        jnp.where(keep, jnp.maximum(batch.history_post_hashes, 1), 0),
    )
    outputs = []
    for model, mode in ((retriever, "sequential"), (warm, "shared")):
        tokens, valid = model.model.embedding.prefix_tokens(batch, model.tables(batch))
        hidden = model.model.transformer(
            tokens, prefix_positions(valid, mode), valid, tokens.shape[1]
        )
        outputs.append(np.where(valid[..., None], hidden, 0.0))
    np.testing.assert_allclose(outputs[1], outputs[0], atol=1e-5)
    # A candidate enters as its item would in the history with no action set.
    as_candidates = eqx.tree_at(
        lambda b: (
            b.candidate_post_hashes,
            b.candidate_author_hashes,
            b.candidate_product_surface,
            b.history_actions,
        ),
        batch,
        (
            batch.history_post_hashes,
            batch.history_author_hashes,
            batch.history_product_surface,
            jnp.zeros_like(batch.history_actions),
        ),
    )
    embeddings = warm.tables(as_candidates)
    candidates, _ = warm.model.embedding.candidate_tokens(as_candidates, embeddings)
    history, _ = warm.model.embedding.history_tokens(as_candidates, embeddings)
    np.testing.assert_allclose(candidates, history, rtol=1e-5, atol=1e-6)
    # What only a ranker has is its own: the action head.
    np.testing.assert_array_equal(warm.model.unembedding, ranker.model.unembedding)
    smaller = TrainableRanker(ranking_config, 50, 40, 50, key=jax.random.key(1))
    with pytest.raises(ValueError, match="retriever.tables: expected arrays of shapes"):
        warm_start_ranker(smaller, retriever)
