"""Fused candidate-isolation attention, whole-sequence and against a cached prefix."""

from .api import cached_candidate_attention, candidate_attention
from .reference import (
    apply_logit_cap,
    cached_candidate_attention_reference,
    candidate_attention_reference,
    candidate_isolation_mask,
    zero_invalid_keys,
)

__all__ = [
    "apply_logit_cap",
    "cached_candidate_attention",
    "cached_candidate_attention_reference",
    "candidate_attention",
    "candidate_attention_reference",
    "candidate_isolation_mask",
    "zero_invalid_keys",
]
