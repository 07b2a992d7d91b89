"""Data for training: interaction logs from CSV and Parquet files, MovieLens-100K and -1M,
synthetic interactions with planted structure, batching."""

from .batches import (
    RankingStream,
    RetrievalStream,
    eval_ranking_example,
    eval_users_batch,
    make_batch,
    sample_unseen,
)
from .examples import RankingExample, RetrievalExample
from .interactions import (
    RATING_ACTIONS,
    InteractionData,
    SequenceSplit,
    leave_last_out,
    rating_actions,
)
from .movielens import (
    GENRES,
    MovieCatalog,
    cache_dir,
    load_movielens_1m,
    load_movielens_100k,
    movie_catalog,
    recbole_wheel_path,
    side_features,
)
from .readers import Interactions, read_interactions_csv, read_interactions_parquet
from .synthetic import synthetic_interactions

__all__ = [
    "GENRES",
    "RATING_ACTIONS",
    "InteractionData",
    "Interactions",
    "MovieCatalog",
    "RankingExample",
    "RankingStream",
    "RetrievalExample",
    "RetrievalStream",
    "SequenceSplit",
    "cache_dir",
    "eval_ranking_example",
    "eval_users_batch",
    "leave_last_out",
    "load_movielens_1m",
    "load_movielens_100k",
    "make_batch",
    "movie_catalog",
    "rating_actions",
    "read_interactions_csv",
    "read_interactions_parquet",
    "recbole_wheel_path",
    "sample_unseen",
    "side_features",
    "synthetic_interactions",
]
