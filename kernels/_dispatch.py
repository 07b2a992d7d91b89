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
    implementation: Implementation, interpret: bool, unsupported: str | None, op: str
) -> bool:
    """Whether an op runs its Pallas kernel.

    `unsupported` is None when the kernel can take the inputs, else why not (naming the argument
    and what the kernel expects). `"pallas"` (or `interpret=True`) always runs the kernel and
    raises that reason if it cannot; `"auto"` runs it on a Hopper GPU when it can; `"xla"` never.
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
        if unsupported is not None:
            raise ValueError(f"{op} (Pallas kernel): {unsupported}")
        return True
    return unsupported is None and is_hopper_gpu()
