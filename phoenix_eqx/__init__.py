"""phoenix_eqx: X's Phoenix recommender as typed Equinox modules, with Pallas kernels.

The top level holds what a user reaches for: `Recommender` and its options, the two models
(`PhoenixModel`, the ranker; `PhoenixRetrievalModel`, two-tower retrieval), their configs,
their inputs and outputs, the hash tables that feed them, and the interaction-log readers.
Building blocks live in submodules: `nn` (layers), `kernels` (the Pallas ops), `training`,
`inference`, `serving`, `distributed`, `data`, `compat` (the original's checkpoints) and
`presets` (X's production shapes).
"""

from . import (
    compat,
    data,
    distributed,
    inference,
    kernels,
    nn,
    presets,
    recommender,
    serving,
    training,
)
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
from .data.readers import read_interactions_csv, read_interactions_parquet
from .embedding import HashEmbeddingTables
from .example_data import create_example_batch, create_example_corpus
from .inputs import RankingOutput, RecsysBatch, RecsysEmbeddings, RetrievalOutput
from .ranker import PhoenixModel
from .recommender import (
    FitOptions,
    ModelOptions,
    OptimizationOptions,
    RankerStageOptions,
    Recommender,
    RetrievalStageOptions,
    ServingOptions,
)
from .retrieval import PhoenixRetrievalModel

__version__ = "0.1.0"

__all__ = [
    "ACTIONS",
    "FitOptions",
    "HashConfig",
    "HashEmbeddingTables",
    "ModelOptions",
    "OptimizationOptions",
    "PhoenixModel",
    "PhoenixModelConfig",
    "PhoenixRetrievalModel",
    "PhoenixRetrievalModelConfig",
    "RankerStageOptions",
    "RankingOutput",
    "Recommender",
    "RecsysBatch",
    "RecsysEmbeddings",
    "RetrievalOutput",
    "RetrievalStageOptions",
    "ServingOptions",
    "TransformerConfig",
    "compat",
    "create_example_batch",
    "create_example_corpus",
    "data",
    "demo_ranker_config",
    "demo_retrieval_config",
    "demo_transformer_config",
    "distributed",
    "inference",
    "kernels",
    "nn",
    "presets",
    "read_interactions_csv",
    "read_interactions_parquet",
    "recommender",
    "serving",
    "training",
]
