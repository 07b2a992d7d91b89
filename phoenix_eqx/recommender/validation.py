"""The held-out items `fit` validates on: each user's last interaction, ranked by the two
stages as `recommend` serves them. They alone pick each stage's best epoch and whether the
ranker is served."""

import dataclasses

import numpy as np
from jaxtyping import Array, Int

from ..training.metrics import ranked_list_metrics
from ..training.models import TrainableRanker, TrainableRetriever
from .models import item_vectors
from .options import FitOptions
from .two_stage import rank_in_chunks


@dataclasses.dataclass(frozen=True)
class Validation:
    """Each validation user's hashes, training sequence and held-out last item, and the
    hashes of every item row."""

    users: np.ndarray
    histories: np.ndarray
    excluded: np.ndarray
    targets: np.ndarray
    item_hashes: Int[Array, "rows item_hashes"]

    def metrics(
        self,
        retriever: TrainableRetriever,
        ranker: TrainableRanker | None,
        options: FitOptions,
        k: int = 10,
    ) -> dict[str, float]:
        """HR@k and NDCG@k of the held-out items (history excluded), with or without ranker."""
        found, _ = rank_in_chunks(
            retriever,
            ranker,
            item_vectors(retriever, self.item_hashes),
            self.item_hashes,
            self.users,
            self.histories,
            self.excluded,
            options,
            k,
        )
        return ranked_list_metrics(found, self.targets, k)
