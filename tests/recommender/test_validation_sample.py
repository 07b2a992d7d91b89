"""`validation_users` caps the held-out users: a fixed sample drawn with the seed; every other
user trains on its whole sequence, and without a cap every user with two items is held out."""

import numpy as np
import pytest

import phoenix_eqx as px
from phoenix_eqx.data.feature_hashes import feature_hashes
from phoenix_eqx.data.synthetic import planted_walks
from phoenix_eqx.recommender.index import index_log
from phoenix_eqx.recommender.validation import hold_out_last


@pytest.fixture(scope="module")
def log_and_features():
    users, items, timestamps = planted_walks(40, 30, 400, seed=5)
    log = index_log(users, items, timestamps, None)
    return log, feature_hashes(log.item_ids, log.user_ids)


@pytest.mark.parametrize("cap", [None, 7, 10_000])
def test_held_out_users_are_a_seeded_sample_and_the_rest_train_on_everything(log_and_features, cap):
    log, features = log_and_features
    options = px.FitOptions(validation_users=cap, history_seq_len=8, verbose=False)
    train, _, validation = hold_out_last(log, features, options)
    eligible = [i for i, sequence in enumerate(log.sequences) if sequence.size >= 2]
    assert validation.targets.size == (len(eligible) if cap is None else min(cap, len(eligible)))
    held_out = [
        i
        for i, (sequence, kept) in enumerate(zip(log.sequences, train, strict=True))
        if kept.size == sequence.size - 1
    ]
    assert len(held_out) == validation.targets.size
    np.testing.assert_array_equal(validation.targets, [log.sequences[i][-1] for i in held_out])
    np.testing.assert_array_equal(
        validation.users, features.user_rows([log.user_ids[i] for i in held_out])
    )
    again = hold_out_last(log, features, options)[2]
    np.testing.assert_array_equal(again.targets, validation.targets)
