"""Choosing between the Pallas kernels and their pure-JAX references."""

from typing import Literal

import jax

Implementation = Literal["auto", "xla", "pallas"]


def is_hopper_gpu() -> bool:
    """True when the default JAX device is an NVIDIA GPU of compute capability 9.x."""
    device = jax.devices()[0]
    if device.platform != "gpu":
        return False
    return str(getattr(device, "compute_capability", "")).startswith("9")


def use_pallas(
    implementation: Implementation, interpret: bool, kernel_supports_inputs: bool, op: str
) -> bool:
    """Whether an op runs its Pallas kernel.

    `"pallas"` (or `interpret=True`) always does, and fails loudly if the kernel cannot take the
    inputs; `"auto"` does on a Hopper GPU when the kernel supports the inputs; `"xla"` never does.
    """
    if implementation not in ("auto", "xla", "pallas"):
        raise ValueError(
            f"implementation: expected 'auto', 'xla' or 'pallas', got {implementation!r}"
        )
    if implementation == "xla":
        if interpret:
            raise ValueError(f"{op}: interpret=True needs implementation 'pallas' or 'auto'")
        return False
    if implementation == "pallas" or interpret:
        if not kernel_supports_inputs:
            raise ValueError(f"{op}: the Pallas kernel does not support these inputs")
        return True
    return kernel_supports_inputs and is_hopper_gpu()
