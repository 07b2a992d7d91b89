"""Benchmarks and measurement scripts of phoenix_eqx, kept out of the installed library.

Nothing here is installed (pyproject.toml lists only the library's packages): run each from the
repository root as `python -m benchmarks.<name>`, e.g. `python -m benchmarks.attention`,
`python -m benchmarks.topk`, `python -m benchmarks.e2e`, `python -m benchmarks.gpu_session`.
`timing` is the one timing helper of them all and `shapes` the one table of their shapes.
"""
