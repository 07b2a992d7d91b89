"""Choosing between the Pallas kernels and their pure-JAX references, and the ops' shared checks."""

import operator
from typing import Literal

import jax

Implementation = Literal["auto", "xla", "pallas"]
"""How an op runs: `"xla"` its pure-JAX reference, `"pallas"` its Mosaic GPU kernel (raising
`NotImplementedError` with the reason when the kernel cannot take the inputs), `"auto"` the
kernel on a Hopper GPU where it can take the inputs and is measured faster, else the reference."""

IMPLEMENTATIONS: tuple[str, ...] = ("auto", "xla", "pallas")


def is_hopper_gpu() -> bool:
    """True when the default JAX device is an NVIDIA GPU of compute capability 9.x."""
    device = jax.devices()[0]
    if device.platform != "gpu":
        return False
    return str(getattr(device, "compute_capability", "")).startswith("9")


def check_implementation(implementation: str) -> None:
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"implementation: expected one of {IMPLEMENTATIONS}, got {implementation!r}"
        )


def static_int(value, name: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """`value` as a Python int: Python, NumPy and concrete JAX integer scalars are accepted.

    Shapes depend on these values, so a traced value (inside jit) or a non-integer is an error.
    """
    if isinstance(value, bool) or isinstance(value, jax.core.Tracer):
        raise ValueError(f"{name}: expected a static integer, got {value!r}")
    try:
        number = operator.index(value)
    except TypeError:
        raise ValueError(f"{name}: expected an integer, got {value!r}") from None
    if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
        low = "" if minimum is None else f"{minimum} <= "
        high = "" if maximum is None else f" <= {maximum}"
        raise ValueError(f"{name}: expected {low}{name}{high}, got {number}")
    return number


def use_pallas(
    implementation: Implementation,
    interpret: bool,
    unsupported: str | None,
    op: str,
    *,
    measured_slower: bool = False,
) -> bool:
    """Whether an op runs its Pallas kernel.

    `unsupported` is None when the kernel can take the inputs, else why not (naming the argument
    and what the kernel expects). `"pallas"` (or `interpret=True`) always runs the kernel and
    raises `NotImplementedError` with that reason if it cannot; `"auto"` runs it on a Hopper GPU
    when it can and `measured_slower` is false (the shape is one where benchmarks show the
    reference faster); `"xla"` never.
    """
    check_implementation(implementation)
    if implementation == "xla":
        if interpret:
            raise ValueError(f"{op}: interpret=True needs implementation 'pallas' or 'auto'")
        return False
    if implementation == "pallas" or interpret:
        if unsupported is not None:
            raise NotImplementedError(f"{op} (Pallas kernel): {unsupported}")
        return True
    return unsupported is None and not measured_slower and is_hopper_gpu()
