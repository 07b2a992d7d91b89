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
from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .evaluation import evaluate_ranking, evaluate_retrieval, retrieval_scores
from .losses import full_softmax_loss, ranking_loss, retrieval_loss
from .metrics import (
    FULL_RANKING_KS,
    RETRIEVAL_KS,
    calibration,
    full_ranking_metrics,
    log_loss,
    per_user_retrieval_metrics,
    pr_auc,
    ranking_metrics,
    relevance_from_targets,
    retrieval_metrics,
    roc_auc,
)
from .models import (
    TrainableRanker,
    TrainableRetriever,
    ranking_objective,
    retrieval_objective,
)
from .sequential import SequenceExample, all_positions_objective
from .steps import init_optimizer, make_eval_step, make_train_step, trainable

__all__ = [
    "FULL_RANKING_KS",
    "RETRIEVAL_KS",
    "Checkpoint",
    "RankingExample",
    "RetrievalExample",
    "SequenceExample",
    "TrainableRanker",
    "TrainableRetriever",
    "all_positions_objective",
    "calibration",
    "ease_weights",
    "evaluate_ranking",
    "evaluate_retrieval",
    "full_ranking_metrics",
    "full_softmax_loss",
    "init_optimizer",
    "item_knn_scores",
    "item_similarity",
    "leave_two_out_baselines",
    "load_checkpoint",
    "log_loss",
    "make_eval_step",
    "make_train_step",
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
    "save_checkpoint",
    "split_full_ranking_metrics",
    "svd_scores",
    "trainable",
]
