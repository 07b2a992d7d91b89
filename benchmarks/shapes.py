"""The one table of benchmark shapes: attention configs, top-k rows, the end-to-end model.

docs/benchmarks.md states them (section 1 attention, 2 top-k, 3 end to end). Every benchmark here,
the attention GPU check and the GPU session take their shapes from this module, so that one
shape's figures in two results files measure the same problem.
"""

import dataclasses

from phoenix_eqx.kernels.candidate_attention.reference import HistoryMode

# 1. Candidate attention ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AttentionConfig:
    batch: int
    prefix: int
    candidates: int
    q_heads: int
    kv_heads: int
    head_dim: int

    @property
    def seq_len(self) -> int:
        return self.prefix + self.candidates

    def useful_flops(self, history: HistoryMode) -> float:
        """FLOPs of the allowed (query, key) pairs only: two matmuls of 2*D per pair and head."""
        prefix, candidates = self.prefix, self.candidates
        prefix_pairs = prefix * prefix if history == "bidirectional" else prefix * (prefix + 1) // 2
        pairs = prefix_pairs + candidates * (prefix + 1)
        return float(4 * self.head_dim * self.q_heads * self.batch * pairs)


ATTENTION_CONFIGS = {
    "rank-serve": AttentionConfig(16, 1024, 512, 8, 8, 128),
    "rank-wide": AttentionConfig(8, 512, 2048, 8, 2, 128),
    "prod-serve": AttentionConfig(4, 1024, 1408, 20, 4, 128),
    "prod-train": AttentionConfig(32, 1024, 256, 20, 4, 128),
}


def quick_attention_config(config: AttentionConfig) -> AttentionConfig:
    """The same heads at a size the CPU (and the Pallas interpreter) gets through in seconds."""
    return dataclasses.replace(config, batch=1, prefix=64, candidates=32)


# 2. Corpus top-k -------------------------------------------------------------------------------

TOPK_DIM = 128
TOPK_SHAPES = [  # (batch, num_items, k)
    *((b, n, k) for k in (100, 1000) for n in (1_000_000, 10_000_000) for b in (1, 128, 1024)),
    (1, 10_000_000, 10_000),
]
TOPK_QUICK_SHAPES = [(1, 3_000, 10), (70, 2_000, 100)]

# 3. End to end ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ModelShapes:
    """Sizes of the whole-model benchmark: both models' transformer and their inputs."""

    emb_size: int
    num_layers: int
    num_q_heads: int
    num_kv_heads: int
    key_size: int
    history: int
    ranker_batch: int
    candidates: int
    retrieval_batch: int
    corpus_size: int
    top_k: int

    @property
    def prefix(self) -> int:
        """User token + history."""
        return 1 + self.history


E2E = ModelShapes(1024, 4, 8, 2, 128, 1023, 8, 1024, 64, 1_000_000, 100)
# The smallest the kernels take (head dim 64): one layer, one head, a 16 + 16 token sequence,
# 4 tiles of corpus.
E2E_QUICK = ModelShapes(64, 1, 1, 1, 64, 15, 1, 16, 1, 512, 10)
