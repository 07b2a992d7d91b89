"""Trainable bundles (embedding tables + model) and their objectives on training examples."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray, PyTree, Scalar

from ..config import PhoenixModelConfig, PhoenixRetrievalModelConfig
from ..data.examples import RankingExample, RetrievalExample
from ..embedding import HashEmbeddingTables
from ..inputs import RecsysBatch
from ..ranker import PhoenixModel
from ..retrieval import PhoenixRetrievalModel
from .losses import ranking_loss, retrieval_loss

INITIAL_TEMPERATURE = 0.1


class TrainableRanker(eqx.Module):
    """`PhoenixModel` with its hash embedding tables: ids in, action logits out."""

    tables: HashEmbeddingTables
    model: PhoenixModel

    def __init__(
        self,
        config: PhoenixModelConfig,
        num_user_rows: int,
        num_post_rows: int,
        num_author_rows: int,
        *,
        key: PRNGKeyArray,
        table_init_std: float = 1.0,
    ):
        tables_key, model_key = jax.random.split(key)
        self.tables = HashEmbeddingTables(
            num_user_rows,
            num_post_rows,
            num_author_rows,
            config.emb_size,
            key=tables_key,
            init_std=table_init_std,
        )
        self.model = PhoenixModel(config, key=model_key)

    @property
    def config(self) -> PhoenixModelConfig:
        return self.model.config

    def __call__(self, batch: RecsysBatch) -> Float[Array, "batch candidates actions"]:
        return self.model(batch, self.tables(batch))

    def score_at_cuts(
        self,
        batch: RecsysBatch,
        rows: Int[Array, " cuts"],
        lengths: Int[Array, " cuts"],
        candidates: RecsysBatch,
    ) -> Float[Array, "cuts candidates actions"]:
        """Encode `batch`'s prefixes once, then score `candidates`' row `i` against prefix
        `rows[i]` cut to its first `lengths[i]` tokens (`PhoenixModel.score_candidates_at_cuts`;
        `candidates`' user and history fields need only the right shapes: under jit their
        lookups, unused, cost nothing)."""
        cache = self.model.encode_prefix(batch, self.tables(batch))
        return self.model.score_candidates_at_cuts(
            cache, rows, lengths, candidates, self.tables(candidates)
        )

    def with_zero_head(self) -> "TrainableRanker":
        """This ranker with its action head (`PhoenixModel.unembedding`) zero: every logit 0.

        The residual ranker's start: its score is retrieval's logit plus this ranker's
        weighted logits, so with a zero head it serves exactly retrieval's order, and training
        moves it away from there only as far as the loss asks (a random head would start it
        from retrieval's order plus noise)."""
        return eqx.tree_at(
            lambda ranker: ranker.model.unembedding,
            self,
            jnp.zeros_like(self.model.unembedding),
        )


class TrainableRetriever(eqx.Module):
    """`PhoenixRetrievalModel` with its hash embedding tables and the learned softmax
    temperature (stored as its log, so it stays positive)."""

    tables: HashEmbeddingTables
    model: PhoenixRetrievalModel
    log_temperature: Float[Array, ""]

    def __init__(
        self,
        config: PhoenixRetrievalModelConfig,
        num_user_rows: int,
        num_post_rows: int,
        num_author_rows: int,
        *,
        key: PRNGKeyArray,
        initial_temperature: float = INITIAL_TEMPERATURE,
        table_init_std: float = 1.0,
    ):
        if not initial_temperature > 0:
            raise ValueError(f"initial_temperature: expected > 0, got {initial_temperature}")
        tables_key, model_key = jax.random.split(key)
        self.tables = HashEmbeddingTables(
            num_user_rows,
            num_post_rows,
            num_author_rows,
            config.emb_size,
            key=tables_key,
            init_std=table_init_std,
        )
        self.model = PhoenixRetrievalModel(config, key=model_key)
        self.log_temperature = jnp.asarray(math.log(initial_temperature), jnp.float32)

    @property
    def config(self) -> PhoenixRetrievalModelConfig:
        return self.model.config

    @property
    def temperature(self) -> Scalar:
        return jnp.exp(self.log_temperature)

    def user_vectors(self, batch: RecsysBatch) -> Float[Array, "batch emb"]:
        """Unit user vectors (float32) of a batch of ids: `encode_users` without the norms."""
        users, _ = self.model.encode_users(batch, self.tables(batch))
        return users

    def encode_items(
        self,
        post_hashes: Int[Array, "*items item_hashes"],
        author_hashes: Int[Array, "*items author_hashes"],
    ) -> Float[Array, "*items emb"]:
        """Unit item vectors (`PhoenixRetrievalModel.encode_items` of the tables' rows), for any
        leading shape (float32)."""
        post, author = self.tables.item_embeddings(post_hashes, author_hashes)
        return self.model.encode_items(post, author).astype(jnp.float32)


def _with_arrays_of(target: PyTree, source: PyTree, name: str) -> PyTree:
    """`target` with the arrays of `source`, a tree of the same structure whose static fields
    may differ (another transformer config's candidate positions, say)."""
    arrays, static = eqx.partition(target, eqx.is_array)
    source_arrays = jax.tree.leaves(eqx.filter(source, eqx.is_array))
    target_arrays = jax.tree.leaves(arrays)
    shapes = [leaf.shape for leaf in target_arrays]
    if [leaf.shape for leaf in source_arrays] != shapes:
        raise ValueError(
            f"{name}: expected arrays of shapes {shapes} (the ranker's), got "
            f"{[leaf.shape for leaf in source_arrays]}"
        )
    return eqx.combine(jax.tree.unflatten(jax.tree.structure(arrays), source_arrays), static)


def warm_start_ranker(ranker: TrainableRanker, retriever: TrainableRetriever) -> TrainableRanker:
    """The ranker with the retriever's trained tables, transformer and `[user | history]` input
    layer (user, history and action projections, surface table).

    Both models read the user and the history the same way, so the ranker starts from a
    history encoder that already knows what comes next. Its candidate projection starts as
    the history projection without the action rows (`candidate_projection_of`), so a
    candidate enters the transformer as its item would in the history; only the action head
    is learned from scratch. Raises ValueError when the two were built with different sizes.
    """
    ranker_input, retriever_input = ranker.model.embedding, retriever.model.embedding
    candidate_projection = candidate_projection_of(
        retriever_input.history_projection, ranker.config.emb_size
    )
    if candidate_projection.shape != ranker_input.candidate_projection.shape:
        raise ValueError(
            f"retriever.embedding.history_projection: expected a candidate projection of shape "
            f"{ranker_input.candidate_projection.shape} (the ranker's) without its action "
            f"rows, got {candidate_projection.shape}"
        )
    prefix_fields = (
        "action_projection",
        "product_surface_table",
        "user_projection",
        "history_projection",
    )
    return eqx.tree_at(
        lambda r: (
            r.tables,
            r.model.transformer,
            *(getattr(r.model.embedding, field) for field in prefix_fields),
            r.model.embedding.candidate_projection,
        ),
        ranker,
        (
            _with_arrays_of(ranker.tables, retriever.tables, "retriever.tables"),
            _with_arrays_of(
                ranker.model.transformer, retriever.model.transformer, "retriever.transformer"
            ),
            *(
                _with_arrays_of(
                    getattr(ranker_input, field),
                    getattr(retriever_input, field),
                    f"retriever.embedding.{field}",
                )
                for field in prefix_fields
            ),
            candidate_projection,
        ),
    )


def candidate_projection_of(
    history_projection: Float[Array, "history_features emb"], emb_size: int
) -> Float[Array, "candidate_features emb"]:
    """A candidate projection that embeds an item as the history projection embeds it, less
    its action: a history token's features are `[post, author, action, surface]` (each
    `emb_size` wide per hash), a candidate's the same without the action block."""
    action_start = history_projection.shape[0] - 2 * emb_size
    return jnp.concatenate(
        [history_projection[:action_start], history_projection[action_start + emb_size :]]
    )


def ranking_objective(
    model: TrainableRanker,
    example: RankingExample,
    action_weights: Float[Array, " actions"] | None = None,
) -> tuple[Scalar, dict[str, Scalar]]:
    """`ranking_loss` of the model's logits; aux: the loss and the number of valid candidates."""
    logits = model(example.batch)
    valid = example.batch.candidate_valid
    loss = ranking_loss(logits, example.labels, valid, action_weights)
    return loss, {"loss": loss, "num_candidates": jnp.sum(valid)}


def retrieval_objective(
    model: TrainableRetriever, example: RetrievalExample
) -> tuple[Scalar, dict[str, Scalar]]:
    """`retrieval_loss` of a batch; aux: the loss and the current temperature."""
    batch = example.batch
    if batch.candidate_post_hashes.shape[1] != 1:
        raise ValueError(
            f"example.batch.candidate_post_hashes: expected one candidate (the positive) per "
            f"user, got shape {batch.candidate_post_hashes.shape}"
        )
    users = model.user_vectors(batch)
    positives = model.encode_items(
        batch.candidate_post_hashes[:, 0], batch.candidate_author_hashes[:, 0]
    )
    # A batch without extra negatives has zero-size arrays; skip the tower for them.
    negatives = (
        model.encode_items(example.negative_post_hashes, example.negative_author_hashes)
        if example.negative_post_hashes.shape[0]
        else None
    )
    loss = retrieval_loss(
        users,
        positives,
        batch.candidate_post_hashes[:, 0, 0],
        model.temperature,
        positive_log_q=example.positive_log_q,
        negative_vectors=negatives,
        negative_ids=example.negative_post_hashes[:, 0] if negatives is not None else None,
        negative_log_q=example.negative_log_q if negatives is not None else None,
        user_valid=batch.user_valid & batch.candidate_valid[:, 0],
    )
    return loss, {"loss": loss, "temperature": model.temperature}
