"""Fused candidate-isolation attention."""

from .api import candidate_attention
from .reference import apply_logit_cap, candidate_attention_reference, candidate_isolation_mask

__all__ = [
    "apply_logit_cap",
    "candidate_attention",
    "candidate_attention_reference",
    "candidate_isolation_mask",
]
