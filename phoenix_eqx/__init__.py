"""phoenix_eqx: X's Phoenix recommender as typed Equinox modules, with Pallas kernels."""

from . import compat, data, distributed, inference, kernels, presets, serving, training
from .config import (
    ACTIONS,
    HashConfig,
    PhoenixModelConfig,
    PhoenixRetrievalModelConfig,
    TransformerConfig,
    demo_ranker_config,
    demo_retrieval_config,
    demo_transformer_config,
)
from .embedding import HashEmbeddingTables, InputEmbedding
from .example_data import create_example_batch, create_example_corpus
from .inputs import RankingOutput, RecsysBatch, RecsysEmbeddings, RetrievalOutput
from .ranker import PhoenixModel
from .recommender import (
    FitOptions,
    Recommender,
    read_interactions_csv,
    read_interactions_parquet,
)
from .retrieval import CandidateTower, PhoenixRetrievalModel
from .sharded_tables import ShardedHashEmbeddingTables, shard_tables, sharded_lookup_rows
from .transformer import (
    Attention,
    DecoderLayer,
    GatedGeluFFN,
    Linear,
    RMSNorm,
    Transformer,
    apply_rotary,
)

__version__ = "0.1.0"

__all__ = [
    "ACTIONS",
    "Attention",
    "CandidateTower",
    "DecoderLayer",
    "FitOptions",
    "GatedGeluFFN",
    "HashConfig",
    "HashEmbeddingTables",
    "InputEmbedding",
    "Linear",
    "PhoenixModel",
    "PhoenixModelConfig",
    "PhoenixRetrievalModel",
    "PhoenixRetrievalModelConfig",
    "RMSNorm",
    "RankingOutput",
    "Recommender",
    "RecsysBatch",
    "RecsysEmbeddings",
    "RetrievalOutput",
    "ShardedHashEmbeddingTables",
    "Transformer",
    "TransformerConfig",
    "apply_rotary",
    "compat",
    "data",
    "distributed",
    "inference",
    "create_example_batch",
    "create_example_corpus",
    "demo_ranker_config",
    "demo_retrieval_config",
    "demo_transformer_config",
    "kernels",
    "presets",
    "read_interactions_csv",
    "read_interactions_parquet",
    "serving",
    "shard_tables",
    "sharded_lookup_rows",
    "training",
]
