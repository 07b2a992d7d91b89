"""Shared test set-up: hypothesis profiles, float64-free CPU defaults, GPU marker handling."""

import os

import jax
import pytest
from hypothesis import HealthCheck, settings

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


def _has_hopper_gpu() -> bool:
    device = jax.devices()[0]
    return device.platform == "gpu" and str(getattr(device, "compute_capability", "")).startswith(
        "9"
    )


def pytest_collection_modifyitems(config, items):
    if _has_hopper_gpu():
        return
    skip_gpu = pytest.mark.skip(reason="needs a Hopper GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
