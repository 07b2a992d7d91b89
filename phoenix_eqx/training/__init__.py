"""Training: losses, jitted steps, checkpoints, evaluation and metrics for both Phoenix models."""

from ..data.examples import RankingExample, RetrievalExample
from .baselines import (
    ease_weights,
    item_knn_scores,
    item_similarity,
    leave_two_out_baselines,
    popularity_scores,
    recency_profiles,
    split_full_ranking_metrics,
    svd_scores,
)
from .checkpoint import Checkpoint, CheckpointManager, export_model, load_exported_model
from .evaluation import evaluate_ranking, evaluate_retrieval, retrieval_scores
from .loop import NonFiniteLossError
from .losses import full_softmax_loss, ranking_loss, retrieval_loss
from .metrics import (
    FULL_RANKING_KS,
    RETRIEVAL_KS,
    calibration,
    full_ranking_metrics,
    full_ranking_per_user,
    log_loss,
    paired_difference,
    per_user_retrieval_metrics,
    pr_auc,
    ranking_metrics,
    relevance_from_targets,
    retrieval_metrics,
    roc_auc,
    users_mean,
)
from .models import (
    TrainableRanker,
    TrainableRetriever,
    ranking_objective,
    retrieval_objective,
    warm_start_ranker,
)
from .row_updates import LookedUp, TableRows, make_row_update_step
from .sequential import SequenceExample, all_positions_objective, all_positions_rows
from .sparse_optim import RowwiseAdagradState, rowwise_adagrad, rowwise_adagrad_for_tables
from .steps import init_optimizer, make_eval_step, make_train_step, trainable

__all__ = [
    "FULL_RANKING_KS",
    "RETRIEVAL_KS",
    "Checkpoint",
    "LookedUp",
    "CheckpointManager",
    "NonFiniteLossError",
    "RankingExample",
    "RetrievalExample",
    "RowwiseAdagradState",
    "SequenceExample",
    "TableRows",
    "TrainableRanker",
    "TrainableRetriever",
    "all_positions_objective",
    "all_positions_rows",
    "calibration",
    "ease_weights",
    "evaluate_ranking",
    "evaluate_retrieval",
    "export_model",
    "full_ranking_metrics",
    "full_ranking_per_user",
    "full_softmax_loss",
    "init_optimizer",
    "item_knn_scores",
    "item_similarity",
    "leave_two_out_baselines",
    "load_exported_model",
    "log_loss",
    "make_eval_step",
    "make_row_update_step",
    "make_train_step",
    "paired_difference",
    "per_user_retrieval_metrics",
    "popularity_scores",
    "pr_auc",
    "ranking_loss",
    "ranking_metrics",
    "ranking_objective",
    "recency_profiles",
    "relevance_from_targets",
    "retrieval_loss",
    "retrieval_metrics",
    "retrieval_objective",
    "retrieval_scores",
    "roc_auc",
    "rowwise_adagrad",
    "rowwise_adagrad_for_tables",
    "split_full_ranking_metrics",
    "svd_scores",
    "trainable",
    "users_mean",
    "warm_start_ranker",
]
