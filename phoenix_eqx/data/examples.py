"""The training examples the data streams produce and the trainable models consume."""

import equinox as eqx
from jaxtyping import Array, Float, Int

from ..inputs import RecsysBatch


class RankingExample(eqx.Module):
    """A ranking batch: users, histories and candidates, with each candidate's action labels."""

    batch: RecsysBatch
    labels: Float[Array, "batch candidates actions"]


class RetrievalExample(eqx.Module):
    """A retrieval batch: each user's history and one positive (its only candidate), plus
    extra sampled negatives shared by the batch (possibly none).

    `*_log_q` are the log sampling probabilities of the logQ correction.
    """

    batch: RecsysBatch
    positive_log_q: Float[Array, " batch"]
    negative_post_hashes: Int[Array, "negatives item_hashes"]
    negative_author_hashes: Int[Array, "negatives author_hashes"]
    negative_log_q: Float[Array, " negatives"]
