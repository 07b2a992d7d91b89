"""Multi-device inference, retrieval and training on 8 emulated CPU devices, against one device.

The device count is fixed when jax initialises, and other test modules initialise it first in
this process, so the checks run in a subprocess (this file run as a script) that reports JSON.
"""

import json

import pytest

from ..helpers import run_on_cpu_devices

DEVICES = 8


def _worker() -> dict:
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    import phoenix_eqx as px
    from phoenix_eqx import distributed
    from phoenix_eqx.inference import encode_users, rank, retrieve, set_corpus
    from phoenix_eqx.training import (
        RankingExample,
        TrainableRanker,
        init_optimizer,
        make_train_step,
        ranking_objective,
    )
    from tests.helpers import example_inputs, tiny_ranker_config, tiny_retrieval_config

    def max_diff(a, b) -> float:
        return float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))))

    results: dict = {"devices": len(jax.devices())}
    mesh = distributed.make_mesh("batch")
    config = tiny_ranker_config()
    ranker = px.PhoenixModel(config, key=jax.random.key(0))
    batch, embeddings = example_inputs(config, batch_size=DEVICES, candidates=5)
    expected = rank(ranker, batch, embeddings)
    sharded_batch = distributed.shard_batch(batch, mesh)
    sharded_embeddings = distributed.shard_batch(embeddings, mesh)
    output = distributed.sharded_rank(ranker, sharded_batch, sharded_embeddings, mesh=mesh)
    results["rank_logit_diff"] = max_diff(output.logits, expected.logits)
    results["rank_same_order"] = bool(
        np.array_equal(output.ranked_indices, expected.ranked_indices)
    )
    results["rank_output_sharding"] = str(output.logits.sharding.spec)
    chunked = distributed.sharded_rank(ranker, batch, embeddings, mesh=mesh, candidate_chunk=2)
    results["rank_chunked_logit_diff"] = max_diff(chunked.logits, expected.logits)
    # A mesh of jax's default (Explicit) axis type, and unplaced inputs.
    explicit_mesh = jax.make_mesh((DEVICES,), ("users",))
    explicit = distributed.sharded_rank(
        ranker, batch, embeddings, mesh=explicit_mesh, axis_name="users"
    )
    results["rank_explicit_mesh_logit_diff"] = max_diff(explicit.logits, expected.logits)
    try:
        distributed.sharded_rank(ranker, _rows(batch, 3), _rows(embeddings, 3), mesh=mesh)
        results["indivisible_error"] = ""
    except ValueError as error:
        results["indivisible_error"] = str(error)

    retrieval_config = tiny_retrieval_config()
    retrieval = px.PhoenixRetrievalModel(retrieval_config, key=jax.random.key(1))
    users = distributed.sharded_encode_users(retrieval, batch, embeddings, mesh=mesh)[0]
    results["users_diff"] = max_diff(users, encode_users(retrieval, batch, embeddings)[0])

    corpus_mesh = distributed.make_mesh("corpus")
    vectors, post_ids = px.create_example_corpus(DEVICES * 32, 16, key=jax.random.key(2))
    mask = jax.random.bernoulli(jax.random.key(3), 0.8, (vectors.shape[0],))
    corpus = set_corpus(vectors, post_ids, mask)
    sharded_corpus = distributed.shard_corpus(corpus, corpus_mesh)
    results["corpus_sharding"] = str(sharded_corpus.embeddings.sharding.spec)
    for top_k in (10, 100):  # below and above the 32 items of one shard
        expected_top = retrieve(retrieval, batch, embeddings, corpus, top_k)
        got = distributed.sharded_retrieve(
            retrieval, batch, embeddings, sharded_corpus, top_k, mesh=corpus_mesh
        )
        results[f"retrieve_{top_k}_same_indices"] = bool(
            np.array_equal(got.top_k_indices, expected_top.top_k_indices)
        )
        finite = np.isfinite(np.asarray(expected_top.top_k_scores))
        results[f"retrieve_{top_k}_score_diff"] = max_diff(
            np.asarray(got.top_k_scores)[finite], np.asarray(expected_top.top_k_scores)[finite]
        )

    # Data parallelism: the same three steps on one device and on eight.
    trainable = TrainableRanker(config, 50, 50, 50, key=jax.random.key(4))
    labels = jax.random.bernoulli(jax.random.key(5), 0.3, (DEVICES, 5, config.num_actions))
    example = RankingExample(batch=batch, labels=labels.astype(jnp.float32))
    optimizer = optax.adam(1e-2)
    step = make_train_step(ranking_objective, optimizer)

    def train(step_fn):
        model, state, losses = trainable, init_optimizer(optimizer, trainable), []
        for _ in range(3):
            model, state, aux = step_fn(model, state, example)
            losses.append(float(aux["loss"]))
        return model, losses

    single_model, single_losses = train(step)
    parallel_model, parallel_losses = train(distributed.data_parallel(step, mesh=mesh))
    results["train_losses"] = [single_losses, parallel_losses]
    params = [eqx.filter(m, eqx.is_array) for m in (single_model, parallel_model)]
    results["train_param_diff"] = max(jax.tree.leaves(jax.tree.map(max_diff, *params)))
    results["train_param_sharding"] = str(jax.tree.leaves(params[1])[0].sharding.spec)
    return results


def _rows(tree, count: int):
    import jax

    return jax.tree.map(lambda x: x[:count], tree)


@pytest.fixture(scope="module")
def results() -> dict:
    return run_on_cpu_devices("tests.distributed.test_distributed", DEVICES)


def test_runs_on_eight_devices(results):
    assert results["devices"] == DEVICES


def test_sharded_rank_equals_one_device(results):
    assert results["rank_logit_diff"] < 1e-5
    assert results["rank_chunked_logit_diff"] < 1e-5
    assert results["rank_explicit_mesh_logit_diff"] < 1e-5
    assert results["rank_same_order"]
    assert "batch" in results["rank_output_sharding"]


def test_indivisible_batch_is_rejected(results):
    assert "divisible by the 8 devices" in results["indivisible_error"]


def test_sharded_user_tower_equals_one_device(results):
    assert results["users_diff"] < 1e-5


def test_sharded_corpus_retrieval_equals_one_device(results):
    assert "corpus" in results["corpus_sharding"]
    for top_k in (10, 100):
        assert results[f"retrieve_{top_k}_same_indices"]
        assert results[f"retrieve_{top_k}_score_diff"] < 1e-5


def test_data_parallel_training_equals_one_device(results):
    single, parallel = results["train_losses"]
    assert single == pytest.approx(parallel, abs=1e-5)
    assert results["train_param_diff"] < 1e-4
    assert results["train_param_sharding"] == "P()"  # replicated


if __name__ == "__main__":
    print(json.dumps(_worker()))
