"""phoenix_eqx.kernels: the two hot spots of Phoenix as ops with Pallas kernels.

Each op has a pure-JAX reference (the test oracle and the `"xla"` path), a Mosaic GPU kernel for
Hopper (`"pallas"`), and a dispatch (`"auto"`) that picks the kernel where it runs.
"""

from .candidate_attention import (
    cached_candidate_attention,
    candidate_attention,
    candidate_isolation_mask,
)
from .corpus_top_k import TopK, corpus_top_k, sharded_corpus_top_k
from .dispatch import Implementation

__all__ = [
    "Implementation",
    "TopK",
    "cached_candidate_attention",
    "candidate_attention",
    "candidate_isolation_mask",
    "corpus_top_k",
    "sharded_corpus_top_k",
]
