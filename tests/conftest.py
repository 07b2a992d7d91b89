"""Shared test set-up: hypothesis profiles, float64-free CPU defaults, GPU marker handling."""

import os

import pytest
from hypothesis import HealthCheck, settings
from phoenix_eqx.kernels.dispatch import is_hopper_gpu

# JAX compiles on first call, so per-example deadlines are meaningless.
settings.register_profile(
    "ci",
    max_examples=6,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "thorough",
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_collection_modifyitems(config, items):
    if is_hopper_gpu():
        return
    skip_gpu = pytest.mark.skip(reason="needs a Hopper GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
