"""Ranking and retrieval losses: definitions, masking, weights, accidental hits, logQ."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from phoenix_eqx.training import full_softmax_loss, ranking_loss, retrieval_loss

from ..helpers import library_checks_only


def _bce(logit, label):
    return np.log1p(np.exp(-logit)) if label else np.log1p(np.exp(logit))


@given(seed=st.integers(0, 2**16), batch=st.integers(1, 3), candidates=st.integers(1, 4))
def test_ranking_loss_matches_a_direct_computation(seed, batch, candidates):
    rng = np.random.default_rng(seed)
    actions = 5
    logits = rng.normal(size=(batch, candidates, actions)).astype(np.float32)
    labels = rng.integers(0, 2, size=logits.shape).astype(np.float32)
    valid = rng.random((batch, candidates)) < 0.7
    weights = rng.uniform(0.1, 2.0, size=actions).astype(np.float32)
    total, count = 0.0, 0
    for b in range(batch):
        for c in range(candidates):
            if valid[b, c]:
                per_action = [_bce(logits[b, c, a], labels[b, c, a]) for a in range(actions)]
                total += np.dot(per_action, weights) / weights.sum()
                count += 1
    expected = total / max(count, 1)
    loss = ranking_loss(
        jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(valid), jnp.asarray(weights)
    )
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5, atol=1e-6)


def test_ranking_loss_ignores_padding_candidates():
    key_logits, key_labels = jax.random.split(jax.random.key(0))
    logits = jax.random.normal(key_logits, (2, 3, 19))
    labels = jax.random.bernoulli(key_labels, 0.5, (2, 3, 19)).astype(jnp.float32)
    valid = jnp.array([[True, True, False], [True, False, False]])
    base = ranking_loss(logits, labels, valid)
    # Anything in a padding slot, even huge logits, changes nothing.
    garbage = logits.at[0, 2].set(1e4).at[1, 1:].set(-1e4)
    assert float(ranking_loss(garbage, labels, valid)) == pytest.approx(float(base))
    grads = jax.grad(ranking_loss)(logits, labels, valid)
    assert float(jnp.abs(grads[~valid]).max()) == 0.0
    assert float(ranking_loss(logits, labels, jnp.zeros_like(valid))) == 0.0


def test_ranking_loss_action_weights_select_actions():
    logits = jax.random.normal(jax.random.key(1), (1, 2, 19))
    labels = jnp.zeros((1, 2, 19))
    valid = jnp.ones((1, 2), bool)
    only_first = jnp.zeros(19).at[0].set(3.0)
    expected = ranking_loss(logits[..., :1], labels[..., :1], valid)
    np.testing.assert_allclose(ranking_loss(logits, labels, valid, only_first), expected, rtol=1e-6)


@library_checks_only()
def test_ranking_loss_rejects_bad_shapes():
    logits = jnp.zeros((2, 3, 4))
    with pytest.raises(ValueError, match="labels: expected shape"):
        ranking_loss(logits, jnp.zeros((2, 3, 5)), jnp.ones((2, 3), bool))
    with pytest.raises(ValueError, match="candidate_valid"):
        ranking_loss(logits, logits, jnp.ones((2, 4), bool))
    with pytest.raises(ValueError, match="action_weights"):
        ranking_loss(logits, logits, jnp.ones((2, 3), bool), jnp.ones(3))


def _unit(x):
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def _vectors(seed, batch=4, negatives=3, emb=8):
    keys = jax.random.split(jax.random.key(seed), 3)
    return (
        _unit(jax.random.normal(keys[0], (batch, emb))),
        _unit(jax.random.normal(keys[1], (batch, emb))),
        _unit(jax.random.normal(keys[2], (negatives, emb))),
    )


@given(seed=st.integers(0, 2**16))
def test_retrieval_loss_is_softmax_cross_entropy_with_log_q(seed):
    users, positives, negatives = _vectors(seed)
    ids = jnp.array([1, 2, 3, 4])
    negative_ids = jnp.array([5, 6, 7])
    log_q = jnp.linspace(-2.0, 0.0, 4)
    negative_log_q = jnp.array([-1.0, -3.0, 0.5])
    temperature = 0.2
    loss = retrieval_loss(
        users,
        positives,
        ids,
        temperature,
        positive_log_q=log_q,
        negative_vectors=negatives,
        negative_ids=negative_ids,
        negative_log_q=negative_log_q,
    )
    columns = np.concatenate([positives, negatives])
    corrections = np.concatenate([log_q, negative_log_q])
    logits = np.asarray(users) @ columns.T / temperature - corrections[None]
    log_softmax = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    expected = -np.mean(np.diag(log_softmax[:, :4]))
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)


def test_retrieval_loss_removes_accidental_hits():
    users, positives, negatives = _vectors(3)
    # Users 0 and 2 share a positive; negative 1 is user 3's positive.
    ids = jnp.array([10, 11, 10, 12])
    negative_ids = jnp.array([20, 12, 21])
    loss = retrieval_loss(
        users, positives, ids, 1.0, negative_vectors=negatives, negative_ids=negative_ids
    )
    columns = np.concatenate([positives, negatives])
    logits = np.asarray(users) @ columns.T
    removed = np.zeros_like(logits, bool)
    removed[0, 2] = removed[2, 0] = removed[3, 4 + 1] = True
    total = 0.0
    for i in range(4):
        keep = ~removed[i]
        total += -(logits[i, i] - np.log(np.exp(logits[i, keep]).sum()))
    np.testing.assert_allclose(float(loss), total / 4, rtol=1e-5)


def test_retrieval_loss_skips_invalid_users_and_their_columns():
    users, positives, _ = _vectors(4)
    ids = jnp.array([1, 2, 0, 4])
    loss = retrieval_loss(users, positives, ids, 0.5)
    keep = np.array([0, 1, 3])
    reduced = retrieval_loss(users[keep], positives[keep], ids[keep], 0.5)
    np.testing.assert_allclose(float(loss), float(reduced), rtol=1e-6)


@given(seed=st.integers(0, 2**16), poison=st.sampled_from([np.nan, np.inf, -np.inf]))
def test_invalid_rows_add_nothing_to_either_softmax_loss_even_as_nan(seed, poison):
    users, positives, _ = _vectors(seed)
    ids = jnp.array([1, 2, 0, 4])
    valid = ids > 0
    log_q = jnp.array([0.3, -0.2, 0.0, 0.1])
    # Row 2 is invalid: poison its vector and its log_q (the -inf a zero frequency gives).
    bad_users = users.at[2].set(poison)
    bad_log_q = log_q.at[2].set(poison)

    def losses(users, log_q):
        sampled = retrieval_loss(users, positives, ids, 0.5, positive_log_q=log_q)
        full = full_softmax_loss(users, positives, jnp.maximum(ids - 1, 0), valid, 0.5)
        return sampled + full

    clean, clean_grad = jax.value_and_grad(losses)(users, log_q)
    value, grad = jax.value_and_grad(losses)(bad_users, bad_log_q)
    np.testing.assert_allclose(float(value), float(clean), rtol=1e-6)
    keep = np.array([0, 1, 3])
    np.testing.assert_allclose(np.asarray(grad)[keep], np.asarray(clean_grad)[keep], rtol=1e-5)
    assert np.all(np.isfinite(np.asarray(grad)))


def test_retrieval_loss_lower_temperature_sharpens_a_correct_model():
    positives = _unit(jax.random.normal(jax.random.key(5), (6, 16)))
    ids = jnp.arange(1, 7)
    warm = retrieval_loss(positives, positives, ids, 1.0)
    cold = retrieval_loss(positives, positives, ids, 0.05)
    assert float(cold) < float(warm)


@library_checks_only()
def test_retrieval_loss_rejects_bad_inputs():
    users, positives, negatives = _vectors(6)
    ids = jnp.arange(1, 5)
    with pytest.raises(ValueError, match="positive_vectors"):
        retrieval_loss(users, positives[:3], ids, 0.1)
    with pytest.raises(ValueError, match="positive_ids"):
        retrieval_loss(users, positives, ids[:3], 0.1)
    with pytest.raises(ValueError, match="negative_ids"):
        retrieval_loss(
            users, positives, ids, 0.1, negative_vectors=negatives, negative_ids=jnp.arange(2)
        )
    with pytest.raises(Exception, match="temperature"):
        retrieval_loss(users, positives, ids, -1.0)
