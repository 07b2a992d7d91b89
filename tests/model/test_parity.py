"""Seed parity: the original Haiku code's golden outputs, reproduced through the Haiku loaders."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

import phoenix_eqx as px
from phoenix_eqx import compat
from phoenix_eqx.inference import encode_candidates, encode_users, rank, retrieve, set_corpus

from ..helpers import load_golden

TOLERANCE = {"float32": 1e-5, "bfloat16": 2e-2}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@pytest.fixture(scope="module")
def golden():
    return load_golden()


def test_golden_config_is_the_demo_config(golden):
    data, _, _ = golden
    config = json.loads(bytes(data["config_json"]))
    demo = px.demo_ranker_config()
    assert (config["emb"], config["key"], config["q"], config["kv"]) == (128, 64, 2, 2)
    assert config["layers"] == demo.model.num_layers
    assert config["mult"] == demo.model.attn_output_multiplier
    assert (config["S"], config["C"]) == (demo.history_seq_len, demo.candidate_seq_len)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_ranker_matches_seed(golden, dtype):
    data, batch, embeddings = golden
    params = compat.unflatten_haiku_params(data, "params_ranker/")
    model = compat.ranker_from_haiku(params, px.demo_ranker_config(fprop_dtype=DTYPES[dtype]))
    output = rank(model, batch, embeddings)
    expected = data[f"out_{dtype}/ranker_probs"]
    valid = np.asarray(batch.candidate_valid)
    np.testing.assert_allclose(
        np.asarray(output.probabilities)[valid], expected[valid], atol=TOLERANCE[dtype]
    )
    # Ranks agree among valid candidates wherever the seed's favorite scores are separated.
    favorite = expected[..., 0]
    for user in range(favorite.shape[0]):
        ours = [int(i) for i in output.ranked_indices[user] if valid[user, i]]
        seeds = [int(i) for i in data[f"out_{dtype}/ranked_indices"][user] if valid[user, i]]
        if dtype == "float32":
            assert ours == seeds
        else:
            for a, b in zip(seeds, seeds[1:], strict=False):
                if favorite[user, a] - favorite[user, b] > TOLERANCE[dtype]:
                    assert ours.index(a) < ours.index(b)
    # Invalid candidates come after every valid one.
    for user in range(valid.shape[0]):
        slots = np.asarray(output.ranked_indices[user])
        assert valid[user, slots].tolist() == sorted(valid[user, slots].tolist(), reverse=True)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_retrieval_matches_seed(golden, dtype):
    data, batch, embeddings = golden
    params = compat.unflatten_haiku_params(data, "params_retrieval/")
    model = compat.retrieval_from_haiku(params, px.demo_retrieval_config(fprop_dtype=DTYPES[dtype]))
    tolerance = TOLERANCE[dtype]
    users_valid = np.asarray(batch.user_valid)
    users, _ = encode_users(model, batch, embeddings)
    np.testing.assert_allclose(
        np.asarray(users)[users_valid],
        data[f"out_{dtype}/user_representation"][users_valid],
        atol=tolerance,
    )
    candidates, candidate_valid = encode_candidates(model, batch, embeddings)
    candidate_valid = np.asarray(candidate_valid)
    np.testing.assert_allclose(
        np.asarray(candidates, np.float32)[candidate_valid],
        data[f"out_{dtype}/candidate_representation"][candidate_valid],
        atol=tolerance,
    )
    corpus = set_corpus(jnp.asarray(data["corpus"]), mask=jnp.asarray(data["corpus_mask"]))
    k = json.loads(bytes(data["config_json"]))["K"]
    result = retrieve(model, batch, embeddings, corpus, k, implementation="xla")
    scores = np.asarray(result.top_k_scores)[users_valid]
    expected_scores = data[f"out_{dtype}/top_k_scores"][users_valid]
    np.testing.assert_allclose(scores, expected_scores, atol=tolerance)
    indices = np.asarray(result.top_k_indices)[users_valid]
    expected_indices = data[f"out_{dtype}/top_k_indices"][users_valid]
    if dtype == "float32":
        np.testing.assert_array_equal(indices, expected_indices)
    else:
        # Compare only items whose seed score is separated from both neighbours.
        gaps = np.diff(expected_scores, axis=1)
        separated = np.ones_like(expected_scores, bool)
        separated[:, 1:] &= -gaps > tolerance
        separated[:, :-1] &= -gaps > tolerance
        np.testing.assert_array_equal(indices[separated], expected_indices[separated])
    assert bool(np.all(np.asarray(data["corpus_mask"])[indices]))
