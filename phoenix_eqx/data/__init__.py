"""Data for training: MovieLens-100K, synthetic interactions with planted structure, batching."""

from .batches import (
    RankingStream,
    RetrievalStream,
    eval_ranking_example,
    eval_users_batch,
    make_batch,
    sample_unseen,
)
from .interactions import (
    RATING_ACTIONS,
    InteractionData,
    SequenceSplit,
    leave_last_out,
    rating_actions,
)
from .movielens import GENRES, cache_dir, load_movielens_100k, recbole_wheel_path
from .synthetic import synthetic_interactions

__all__ = [
    "GENRES",
    "RATING_ACTIONS",
    "InteractionData",
    "RankingStream",
    "RetrievalStream",
    "SequenceSplit",
    "cache_dir",
    "eval_ranking_example",
    "eval_users_batch",
    "leave_last_out",
    "load_movielens_100k",
    "make_batch",
    "rating_actions",
    "recbole_wheel_path",
    "sample_unseen",
    "synthetic_interactions",
]
