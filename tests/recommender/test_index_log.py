"""An integer id array is indexed by sorting, anything else id by id: both give one index."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from phoenix_eqx.recommender.index import index_log


@given(
    seed=st.integers(0, 2**16),
    rows=st.integers(1, 60),
    dtype=st.sampled_from([np.int8, np.uint16, np.int64]),
)
def test_integer_arrays_index_as_their_python_lists_do(seed, rows, dtype):
    rng = np.random.default_rng(seed)
    users = rng.integers(0, 6, rows).astype(dtype)
    items = (rng.integers(0, 9, rows) - 3 * (np.dtype(dtype).kind == "i")).astype(dtype)
    times = rng.integers(0, 4, rows)  # ties in time keep the input order
    fast = index_log(users, items, times, None)
    plain = index_log(users.tolist(), items.tolist(), times, None)
    assert fast.item_ids == plain.item_ids and fast.user_ids == plain.user_ids
    assert all(type(item) is int for item in fast.item_ids + fast.user_ids)
    for got, expected in zip(
        fast.sequences + fast.actions, plain.sequences + plain.actions, strict=True
    ):
        np.testing.assert_array_equal(got, expected)
        assert got.dtype == expected.dtype
