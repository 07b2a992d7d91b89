"""Training: losses, jitted steps, checkpoints and evaluation metrics for both Phoenix models."""

from .baselines import item_knn_scores, popularity_scores, svd_scores
from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .losses import ranking_loss, retrieval_loss
from .metrics import (
    RETRIEVAL_KS,
    calibration,
    log_loss,
    per_user_retrieval_metrics,
    pr_auc,
    ranking_metrics,
    relevance_from_targets,
    retrieval_metrics,
    roc_auc,
)
from .models import (
    RankingExample,
    RetrievalExample,
    TrainableRanker,
    TrainableRetriever,
    ranking_objective,
    retrieval_objective,
)
from .steps import init_optimizer, make_eval_step, make_train_step, trainable

__all__ = [
    "RETRIEVAL_KS",
    "Checkpoint",
    "RankingExample",
    "RetrievalExample",
    "TrainableRanker",
    "TrainableRetriever",
    "calibration",
    "init_optimizer",
    "item_knn_scores",
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
    "relevance_from_targets",
    "retrieval_loss",
    "retrieval_metrics",
    "retrieval_objective",
    "roc_auc",
    "save_checkpoint",
    "svd_scores",
    "trainable",
]
