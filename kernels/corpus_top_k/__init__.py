"""Exact blocked top-k over a corpus."""

from .api import corpus_top_k
from .reference import TopK, corpus_top_k_reference, score_sort_key
from .sharded import sharded_corpus_top_k

__all__ = [
    "TopK",
    "corpus_top_k",
    "corpus_top_k_reference",
    "score_sort_key",
    "sharded_corpus_top_k",
]
