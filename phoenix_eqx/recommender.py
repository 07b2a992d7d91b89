"""`Recommender`: fit Phoenix on any interaction log, recommend, save and load.

```python
import phoenix_eqx as px
rec = px.Recommender.fit(user_ids, item_ids, timestamps)
items, scores = rec.recommend(user_ids, histories, k=10)
```

`fit` trains the two Phoenix stages on each user's time-ordered items: the retrieval model with
every position of every sequence as a target (one causal pass per sequence), then the ranker
on the trained retriever's own top results. Each user's last interaction is held out; it alone
drives early stopping and model selection. `recommend` runs the stages as Phoenix serves:
retrieval over the whole corpus, then the ranker re-scores those items with candidate
isolation, ordered by a weighted sum of action probabilities.
"""

import csv
import dataclasses
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Hashable, Iterator, Sequence
from pathlib import Path
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from jaxtyping import Array, Float, Int, PRNGKeyArray, PyTree
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from . import distributed
from .config import (
    ACTIONS,
    HashConfig,
    PhoenixModelConfig,
    PhoenixRetrievalModelConfig,
    TransformerConfig,
)
from .data.feature_hashes import (
    FeatureHashes,
    SideFeatures,
    feature_columns,
    feature_hashes,
    plain_value,
)
from .data.interactions import rating_actions
from .inputs import RecsysBatch
from .kernels import corpus_top_k
from .training.losses import ranking_loss
from .training.models import TrainableRanker, TrainableRetriever, warm_start_ranker
from .training.sequential import SequenceExample, SequenceLoss, all_positions_objective
from .training.steps import Objective, TrainStep, init_optimizer, make_train_step

FORMAT_VERSION = 2  # 2: side features (features.npz)
# Implicit feedback: every row is an engagement, seen as a click and a favorite.
ENGAGED = ("click_score", "favorite_score")
EVAL_CHUNK = 256
MIN_CHUNK = 32
# The narrowest training window: shorter sequences share its batches (and compilation).
MIN_WIDTH = 16


@dataclasses.dataclass(frozen=True)
class FitOptions:
    """How `Recommender.fit` builds and trains the two models. Every field has a default.

    Model: `emb_size`, `num_layers`, `num_heads`, `key_size` size both transformers;
    `history_seq_len` (1..200) is how many of a user's latest items they read;
    `user_pooling` how the retrieval tower's outputs become the user vector
    (`PhoenixRetrievalModelConfig.user_pooling`); `table_init_std` the hash tables' initial
    scale (`HashEmbeddingTables`).
    Retrieval: up to `epochs` passes over the users, every position a target, Adam at
    `learning_rate`, held for most of each stage and then, over its last
    `learning_rate_decay_share` (0: never; 1: the whole stage), lowered along a half cosine to
    zero. A stage's length is its share of `time_budget_s`, or its `epochs` when those end
    first. A step holds `batch_size` sequences of the full `history_seq_len`, or
    proportionally more shorter ones (sequences are batched by length to skip padding);
    `loss` is `"full"` (softmax over every item),
    `"sampled"` (in-batch negatives with logQ correction) or `"auto"` (full up to
    `full_softmax_max_items` items). Training stops after `patience` epochs without a better
    validation HR@10 and keeps the best epoch.
    Ranker: `ranker_epochs` passes, each user once per pass, its sequence encoded once and
    cut at `ranker_positions_per_user` random positions, each with `ranker_candidates`
    candidates: the true next item plus negatives drawn from the retriever's top
    `num_retrieved` for that prefix. With `ranker_warm_start` it starts from the trained
    retriever's tables, transformer and history input layer (`training.warm_start_ranker`).
    Serving: `num_retrieved` items from retrieval go to the ranker; the final order is by
    `sum(weight * probability)` over `action_weights` (action name, weight) pairs.
    `time_budget_s` caps the wall-clock time of fit (retrieval gets `retrieval_share` of it).
    `seed` fixes initialisation and data order; `verbose` shows progress and epoch lines.
    The defaults were chosen on MovieLens-1M validation items (docs/recommender.md).
    """

    emb_size: int = 64
    num_layers: int = 2
    num_heads: int = 2
    key_size: int = 32
    history_seq_len: int = 200
    user_pooling: Literal["mean", "last"] = "last"
    table_init_std: float = 0.05
    epochs: int = 100
    batch_size: int = 16
    learning_rate: float = 2e-3
    learning_rate_decay_share: float = 0.0
    loss: Literal["auto", "full", "sampled"] = "auto"
    full_softmax_max_items: int = 50_000
    patience: int = 5
    ranker_epochs: int = 10
    ranker_candidates: int = 32
    ranker_positions_per_user: int = 1
    ranker_warm_start: bool = True
    num_retrieved: int = 200
    action_weights: tuple[tuple[str, float], ...] = (("click_score", 1.0), ("favorite_score", 0.25))
    time_budget_s: float | None = None
    retrieval_share: float = 0.85
    seed: int = 0
    verbose: bool = True

    def __post_init__(self):
        for name in (
            "emb_size",
            "num_layers",
            "num_heads",
            "key_size",
            "epochs",
            "batch_size",
            "full_softmax_max_items",
            "patience",
            "ranker_candidates",
            "ranker_positions_per_user",
            "num_retrieved",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        if self.ranker_candidates < 2:
            raise ValueError(
                f"ranker_candidates: expected >= 2 (the positive and a negative), "
                f"got {self.ranker_candidates}"
            )
        if not isinstance(self.ranker_epochs, int) or self.ranker_epochs < 0:
            raise ValueError(f"ranker_epochs: expected an int >= 0, got {self.ranker_epochs!r}")
        if self.key_size % 2:
            raise ValueError(f"key_size: expected even (rotary), got {self.key_size}")
        if not 1 <= self.history_seq_len <= 200:
            raise ValueError(f"history_seq_len: expected 1..200, got {self.history_seq_len}")
        if not self.table_init_std > 0:
            raise ValueError(f"table_init_std: expected > 0, got {self.table_init_std}")
        if self.user_pooling not in ("mean", "last"):
            raise ValueError(f"user_pooling: expected 'mean' or 'last', got {self.user_pooling!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate: expected > 0, got {self.learning_rate}")
        if not 0 <= self.learning_rate_decay_share <= 1:
            raise ValueError(
                f"learning_rate_decay_share: expected in [0, 1], got "
                f"{self.learning_rate_decay_share}"
            )
        if self.loss not in ("auto", "full", "sampled"):
            raise ValueError(f"loss: expected 'auto', 'full' or 'sampled', got {self.loss!r}")
        if self.time_budget_s is not None and not self.time_budget_s > 0:
            raise ValueError(f"time_budget_s: expected > 0 or None, got {self.time_budget_s}")
        if not 0 < self.retrieval_share <= 1:
            raise ValueError(f"retrieval_share: expected in (0, 1], got {self.retrieval_share}")
        names = [name for name, _ in self.action_weights]
        unknown = [name for name in names if name not in ACTIONS]
        if unknown or not names or len(set(names)) != len(names):
            raise ValueError(
                f"action_weights: expected distinct (name, weight) pairs with names from "
                f"ACTIONS, got {self.action_weights!r}"
            )

    def weight_vector(self) -> np.ndarray:
        """`action_weights` as a `[len(ACTIONS)]` float32 vector."""
        weights = np.zeros(len(ACTIONS), np.float32)
        for name, weight in self.action_weights:
            weights[ACTIONS.index(name)] = weight
        return weights

    def resolved_loss(self, num_items: int) -> SequenceLoss:
        if self.loss != "auto":
            return self.loss
        return "full" if num_items <= self.full_softmax_max_items else "sampled"


def _ids(values, name: str) -> list:
    if isinstance(values, str | bytes) or not hasattr(values, "__len__"):
        raise ValueError(f"{name}: expected a 1-D sequence of ids, got {type(values).__name__}")
    array = np.asarray(values, dtype=object)
    if array.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D sequence, got shape {array.shape}")
    plain = [plain_value(value) for value in array]
    for value in plain:
        try:
            hash(value)
        except TypeError:
            raise ValueError(f"{name}: expected hashable ids, got {value!r}") from None
    return plain


def _numbers(values, name: str, length: int) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected numbers, got non-numeric values") from None
    if array.shape != (length,):
        raise ValueError(f"{name}: expected shape ({length},) like user_ids, got {array.shape}")
    if np.isnan(array).any():
        raise ValueError(f"{name}: expected no NaN, got {int(np.isnan(array).sum())}")
    return array


def _engaged_actions(count: int) -> np.ndarray:
    actions = np.zeros((count, len(ACTIONS)), np.float32)
    actions[:, [ACTIONS.index(name) for name in ENGAGED]] = 1.0
    return actions


def _windows(sequences: list[np.ndarray], history_seq_len: int) -> np.ndarray:
    """`[len(sequences), history_seq_len]`: each sequence's latest items, left-aligned (0 after)."""
    windows = np.zeros((len(sequences), history_seq_len), np.int32)
    for row, sequence in enumerate(sequences):
        latest = sequence[-history_seq_len:]
        windows[row, : latest.size] = latest
    return windows


def _author_hashes(post_hashes: Int[Array, "*items item_hashes"]) -> Int[Array, "*items 1"]:
    """One author row shared by every item (0 for padding)."""
    return (post_hashes[..., :1] > 0).astype(jnp.int32)


def _batch(
    users: Int[Array | np.ndarray, "batch user_hashes"],
    histories: Int[Array | np.ndarray, "batch history"],
    candidates: Int[Array | np.ndarray, "batch candidates"],
    item_hashes: Int[Array | np.ndarray, "rows item_hashes"],
) -> RecsysBatch:
    """Item rows as Phoenix features: post hashes `item_hashes[row]` (`FeatureHashes`), one
    shared author row, surface 0; `users` are the users' hashes."""
    histories, candidates = jnp.asarray(histories), jnp.asarray(candidates)
    item_hashes = jnp.asarray(item_hashes, jnp.int32)
    history_post, candidate_post = item_hashes[histories], item_hashes[candidates]
    engaged = jnp.asarray(_engaged_actions(1)[0])
    return RecsysBatch(
        user_hashes=jnp.asarray(users, jnp.int32),
        history_post_hashes=history_post,
        history_author_hashes=_author_hashes(history_post),
        # Histories at serving time are bare item ids, so every token says "engaged".
        history_actions=((histories > 0)[..., None] * engaged).astype(jnp.float32),
        history_product_surface=jnp.zeros(histories.shape, jnp.int32),
        candidate_post_hashes=candidate_post,
        candidate_author_hashes=_author_hashes(candidate_post),
        candidate_product_surface=jnp.zeros(candidates.shape, jnp.int32),
    )


def _transformer(options: FitOptions, candidate_positions: str) -> TransformerConfig:
    return TransformerConfig(
        emb_size=options.emb_size,
        key_size=options.key_size,
        num_q_heads=options.num_heads,
        num_kv_heads=options.num_heads,
        num_layers=options.num_layers,
        widening_factor=2.0,
        attn_output_multiplier=1.0 / math.sqrt(options.key_size),
        candidate_positions=candidate_positions,
    )


def _build_models(
    options: FitOptions, features: FeatureHashes, *, key: PRNGKeyArray
) -> tuple[TrainableRetriever, TrainableRanker]:
    retriever_key, ranker_key = jax.random.split(key)
    common = dict(
        emb_size=options.emb_size,
        history_seq_len=options.history_seq_len,
        fprop_dtype=jnp.float32,
        hash_config=HashConfig(
            num_user_hashes=1 + len(features.user_columns),
            num_item_hashes=1 + len(features.item_columns),
            num_author_hashes=1,
        ),
        product_surface_vocab_size=1,
    )
    retrieval_config = PhoenixRetrievalModelConfig(
        model=_transformer(options, "sequential"),
        candidate_seq_len=1,
        user_pooling=options.user_pooling,
        **common,
    )
    # Shared candidate positions: a candidate's score ignores its slot and the padding.
    ranker_config = PhoenixModelConfig(
        model=_transformer(options, "shared"),
        candidate_seq_len=max(options.num_retrieved, options.ranker_candidates),
        **common,
    )
    rows = (features.num_user_rows, features.num_post_rows, 2)
    init_std = options.table_init_std
    return (
        TrainableRetriever(retrieval_config, *rows, key=retriever_key, table_init_std=init_std),
        TrainableRanker(ranker_config, *rows, key=ranker_key, table_init_std=init_std),
    )


@eqx.filter_jit
def _item_vectors(
    retriever: TrainableRetriever, item_hashes: Int[Array, "rows item_hashes"]
) -> Float[Array, "rows emb"]:
    """The unit vector of every item row (row 0, padding, included)."""
    return retriever.encode_items(item_hashes, _author_hashes(item_hashes))


def _top_unseen(
    users: Float[Array, "batch emb"],
    item_vectors: Float[Array, "rows emb"],
    exclude: Int[Array, "batch excluded"],
    k: int,
) -> tuple[Int[Array, "batch k"], Float[Array, "batch k"]]:
    """Each user's `k` best corpus rows, never row 0 (padding) nor the rows in `exclude`.

    `corpus_top_k` takes `k + excluded` rows (at most `excluded` of them can be excluded),
    then the excluded ones drop out. Short of items: index -1, score -inf.
    """
    num_rows = item_vectors.shape[0]
    wide = min(k + exclude.shape[1], num_rows - 1)
    corpus_mask = jnp.arange(num_rows) > 0
    best = corpus_top_k(users, item_vectors, wide, corpus_mask=corpus_mask)
    # Membership by binary search in the sorted exclusions: a direct comparison of every pair
    # costs `wide * excluded` per user, quadratic in the history's length.
    dropped = jnp.zeros(best.indices.shape, bool)
    if exclude.shape[1]:
        sorted_exclude = jnp.sort(exclude, axis=1)
        slots = jax.vmap(jnp.searchsorted)(sorted_exclude, best.indices)
        last = exclude.shape[1] - 1
        dropped = jnp.take_along_axis(sorted_exclude, jnp.minimum(slots, last), 1) == best.indices
    scores = jnp.where(dropped | (best.indices < 0), -jnp.inf, best.scores)
    if wide < k:
        scores = jnp.pad(scores, ((0, 0), (0, k - wide)), constant_values=-jnp.inf)
    top_scores, slots = jax.lax.top_k(scores, k)
    indices = jnp.take_along_axis(jnp.pad(best.indices, ((0, 0), (0, k - min(k, wide)))), slots, 1)
    return jnp.where(jnp.isfinite(top_scores), indices, -1), top_scores


@eqx.filter_jit
def _two_stage(
    retriever: TrainableRetriever,
    ranker: TrainableRanker | None,
    item_vectors: Float[Array, "rows emb"],
    item_hashes: Int[Array, "rows item_hashes"],
    users: Int[Array, "batch user_hashes"],
    histories: Int[Array, "batch history"],
    exclude: Int[Array, "batch excluded"],
    action_weights: Float[Array, " actions"],
    num_retrieved: int,
) -> tuple[Int[Array, "batch retrieved"], Float[Array, "batch retrieved"]]:
    """Retrieve `num_retrieved` rows, then order them by the ranker's weighted action
    probabilities. Without a ranker the retrieval order is final (dot products as scores).
    Callers keep the first `k`: one compilation serves every `k`."""
    empty = jnp.zeros((histories.shape[0], 0), jnp.int32)
    user_vectors = retriever.user_vectors(_batch(users, histories, empty, item_hashes))
    retrieved, retrieval_scores = _top_unseen(user_vectors, item_vectors, exclude, num_retrieved)
    if ranker is None:
        return retrieved, retrieval_scores
    logits = ranker(_batch(users, histories, jnp.maximum(retrieved, 0), item_hashes))
    scores = jax.nn.sigmoid(logits.astype(jnp.float32)) @ action_weights
    scores = jnp.where(retrieved >= 0, scores, -jnp.inf)
    top_scores, slots = jax.lax.top_k(scores, num_retrieved)
    return jnp.take_along_axis(retrieved, slots, axis=1), top_scores


def _progress(verbose: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TimeElapsedColumn(),
        disable=not verbose,
    )


def _optimizer(options: FitOptions) -> optax.GradientTransformation:
    """Clipped Adam whose learning rate is a hyperparameter in its state (`_learning_rate`
    sets it each step)."""
    adam = optax.inject_hyperparams(optax.adam)(learning_rate=options.learning_rate)
    return optax.chain(optax.clip_by_global_norm(1.0), adam)


def _learning_rate(options: FitOptions, progress: float) -> jax.Array:
    """The stage's learning rate when `progress` (0 to 1) of it is done: `learning_rate`
    until the last `learning_rate_decay_share`, then a half cosine down to zero at 1."""
    share = options.learning_rate_decay_share
    into_decay = 0.0 if share == 0 else max(min(progress, 1.0) - (1.0 - share), 0.0) / share
    rate = options.learning_rate * 0.5 * (1.0 + math.cos(math.pi * into_decay))
    return jnp.asarray(rate, jnp.float32)


def _padded_rows(rows: np.ndarray, size: int, padding_row: int) -> np.ndarray:
    return np.concatenate([rows, np.full(size - rows.size, padding_row, rows.dtype)])


def _excluded(sequences: list[np.ndarray]) -> np.ndarray:
    """`[users, width]` item rows to exclude (0-padded); width rounded up to limit recompiles."""
    width = max((sequence.size for sequence in sequences), default=1)
    width = 64 * math.ceil(max(width, 1) / 64)
    excluded = np.zeros((len(sequences), width), np.int32)
    for row, sequence in enumerate(sequences):
        excluded[row, : sequence.size] = sequence
    return excluded


@dataclasses.dataclass(frozen=True)
class _Validation:
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
        vectors = _item_vectors(retriever, self.item_hashes)
        found = _rank_in_chunks(
            retriever,
            ranker,
            vectors,
            self.item_hashes,
            self.users,
            self.histories,
            self.excluded,
            options,
            k,
        )[0]
        hits = found == self.targets[:, None]
        # Fewer than k items: `found` has a column per item.
        gains = hits / np.log2(np.arange(2, hits.shape[1] + 2))[None, :]
        return {f"hr@{k}": float(hits.any(axis=1).mean()), f"ndcg@{k}": float(gains.sum(1).mean())}


@eqx.filter_jit
def _retrieval_scores(
    retriever: TrainableRetriever,
    item_vectors: Float[Array, "rows emb"],
    item_hashes: Int[Array, "rows item_hashes"],
    users: Int[Array | np.ndarray, "batch user_hashes"],
    histories: Int[Array | np.ndarray, "batch history"],
) -> Float[Array, "batch rows"]:
    """Dot products of the users' vectors with every corpus row (row 0, padding, included)."""
    empty = jnp.zeros((histories.shape[0], 0), jnp.int32)
    return retriever.user_vectors(_batch(users, histories, empty, item_hashes)) @ item_vectors.T


def _chunk_bounds(num_users: int) -> list[tuple[int, int]]:
    """`(start, stop)` of `EVAL_CHUNK`-user chunks."""
    return [
        (start, min(start + EVAL_CHUNK, num_users)) for start in range(0, num_users, EVAL_CHUNK)
    ]


def _rank_in_chunks(
    retriever: TrainableRetriever,
    ranker: TrainableRanker | None,
    item_vectors: Float[Array, "rows emb"],
    item_hashes: Int[Array, "rows item_hashes"],
    users: np.ndarray,
    histories: np.ndarray,
    excluded: np.ndarray,
    options: FitOptions,
    k: int,
) -> tuple[np.ndarray, np.ndarray]:
    """`_two_stage`'s top `k` over users in fixed-size chunks, as numpy arrays."""
    num_users = histories.shape[0]
    num_retrieved = min(max(options.num_retrieved, k), item_vectors.shape[0] - 1)
    # Few chunk sizes, so that few compilations serve every call.
    chunk = min(EVAL_CHUNK, max(MIN_CHUNK, 1 << max(num_users - 1, 0).bit_length()))
    weights = jnp.asarray(options.weight_vector())
    indices, scores = [], []
    for start in range(0, num_users, chunk):
        rows = np.arange(start, min(start + chunk, num_users))
        padded = _padded_rows(rows, chunk, int(rows[0]))
        found, found_scores = _two_stage(
            retriever,
            ranker,
            item_vectors,
            item_hashes,
            jnp.asarray(users[padded]),
            jnp.asarray(histories[padded]),
            jnp.asarray(excluded[padded]),
            weights,
            num_retrieved,
        )
        indices.append(np.asarray(found)[: rows.size, :k])
        scores.append(np.asarray(found_scores)[: rows.size, :k])
    return np.concatenate(indices), np.concatenate(scores)


# One validation of `fit`: (seconds since fit started, stage, epoch, validation HR@10).
ValidationRecord = tuple[float, str, int, float]


@dataclasses.dataclass(frozen=True)
class _FitRun:
    """What both stages share within one `fit`: its options, console, start time and
    validation history (appended to), and the mesh it trains over (None: one device)."""

    options: FitOptions
    console: Console
    started: float
    history: list[ValidationRecord]
    mesh: Mesh | None


def _run_epochs(
    stage: str,
    model: PyTree,
    objective: Objective,
    epochs: int,
    steps: int,
    epoch_examples: Callable[[], Iterator[PyTree]],
    evaluate: Callable[[PyTree], dict[str, float]],
    run: _FitRun,
    deadline: float,
) -> tuple[PyTree, dict[str, float]]:
    """The training loop of both stages: up to `epochs` passes of Adam steps over
    `epoch_examples()` (`steps` of them), each followed by `evaluate` of this process's replica.
    The rate follows `_learning_rate` over the stage's progress: the larger of its time used
    (to `deadline`) and its steps done (of `epochs * steps`).
    Keeps the epoch with the best validation HR@10 and stops after `options.patience` epochs
    without a better one, or at `deadline`. The objective's aux has the step's "loss" and
    "targets" (how many it trained)."""
    options, mesh = run.options, run.mesh
    optimizer = _optimizer(options)
    step = _train_step(objective, optimizer, mesh)
    opt_state = init_optimizer(optimizer, model)
    best, best_metrics, stale = model, {"hr@10": -1.0}, 0
    clock = _StageClock(time.perf_counter(), deadline, mesh)
    time_used, steps_done = 0.0, 0
    with _progress(options.verbose) as progress:
        for epoch in range(1, epochs + 1):
            task = progress.add_task(f"{stage} {epoch}", total=steps, loss=float("nan"))
            losses, started, trained = [], time.perf_counter(), 0
            for example in epoch_examples():
                rate = _learning_rate(options, max(time_used, steps_done / (epochs * steps)))
                opt_state = optax.tree.set(opt_state, learning_rate=rate)
                model, opt_state, aux = step(model, opt_state, example)
                steps_done += 1
                losses.append(float(aux["loss"]))
                trained += int(aux["targets"])
                progress.update(task, advance=1, loss=float(np.mean(losses[-20:])))
                time_used = clock.fraction_used()
                if time_used >= 1.0:
                    break
            rate = trained / (time.perf_counter() - started)
            replica = _replica(model, mesh)
            metrics = evaluate(replica)
            run.history.append((time.perf_counter() - run.started, stage, epoch, metrics["hr@10"]))
            run.console.print(
                f"{stage} epoch {epoch}: loss {np.mean(losses):.4f}  valid HR@10 "
                f"{metrics['hr@10']:.4f}  NDCG@10 {metrics['ndcg@10']:.4f}  ({rate:,.0f} targets/s)"
            )
            # A strictly better HR@10 replaces the best epoch.
            if metrics["hr@10"] > best_metrics["hr@10"]:
                best, best_metrics, stale = replica, metrics, 0
            else:
                stale += 1
            if stale >= options.patience or clock.fraction_used() >= 1.0:
                break
    return best, best_metrics


def _train_step(
    objective: Objective, optimizer: optax.GradientTransformation, mesh: Mesh | None
) -> TrainStep:
    """`make_train_step`, data-parallel over the mesh's batch axis when there is one."""
    step = make_train_step(objective, optimizer)
    return step if mesh is None else distributed.data_parallel(step, mesh=mesh)


def _on_mesh(example: PyTree, mesh: Mesh | None) -> PyTree:
    """A step's whole batch, which every process builds alike (same seed, same draws), as the
    global batch over the mesh: each process contributes its `process_local_slice` of every
    leaf's rows (leaves may differ in rows: a ranker step's users and their cuts). Unchanged
    without a mesh."""
    if mesh is None:
        return example
    local = jax.tree.map(
        lambda leaf: leaf[distributed.process_local_slice(leaf.shape[0], mesh)], example
    )
    return distributed.make_global_batch(local, mesh)


def _replica(model: PyTree, mesh: Mesh | None) -> PyTree:
    """The model as this process evaluates and keeps it: its own replica, on one device."""
    return model if mesh is None else distributed.local_replica(model)


@dataclasses.dataclass(frozen=True)
class _StageClock:
    """A stage's time from `start` to `deadline` (`perf_counter` seconds; inf: no limit)."""

    start: float
    deadline: float
    mesh: Mesh | None

    def fraction_used(self) -> float:
        """How much of the stage's time has passed (0 without a deadline; >= 1: stop). With
        several processes, process 0's clock decides for all: one stopping alone would leave
        the others waiting in the next step's collectives, and the learning rate it sets
        must be the same everywhere."""
        if math.isinf(self.deadline):
            return 0.0
        used = (time.perf_counter() - self.start) / max(self.deadline - self.start, 1e-9)
        if self.mesh is None or jax.process_count() == 1:
            return used
        return float(multihost_utils.broadcast_one_to_all(np.float64(used)))


def _length_bucketed_batches(
    lengths: np.ndarray,
    history_seq_len: int,
    batch_size: int,
    rng: np.random.Generator,
    multiple: int,
) -> list[tuple[np.ndarray, int]]:
    """One epoch's batches `(rows, width)`, every sequence once, in random order.

    Sequences are grouped by the window width their length needs (a power of two from
    `MIN_WIDTH`, or `history_seq_len`), so that a batch spends little on padding; a batch of
    width `w` holds `batch_size * history_seq_len // w` sequences, rounded down to a multiple
    of `multiple` (the devices a batch is split over; `batch_size` is one), so every step
    trains about as many positions, and few shapes (one compilation each) cover every batch.
    Short batches are filled with row `len(lengths)`, the all-padding row.
    """
    widths = sorted(
        {
            min(max(1 << max(int(length) - 1, 0).bit_length(), MIN_WIDTH), history_seq_len)
            for length in lengths
        }
    )
    needed = np.searchsorted(widths, np.minimum(lengths, history_seq_len))
    batches = []
    for index, width in enumerate(widths):
        rows = rng.permutation(np.flatnonzero(needed == index))
        size = max(1, batch_size * history_seq_len // width)
        size -= size % multiple
        for start in range(0, rows.size, size):
            batches.append((_padded_rows(rows[start : start + size], size, len(lengths)), width))
    return [batches[i] for i in rng.permutation(len(batches))]


def _train_retriever(
    retriever: TrainableRetriever,
    sequences: list[np.ndarray],
    users: list,
    features: FeatureHashes,
    validation: _Validation,
    run: _FitRun,
    deadline: float,
) -> tuple[TrainableRetriever, dict[str, float]]:
    """All-positions training, one epoch = every user once (`sequences[i]` is `users[i]`'s);
    keeps the best validation epoch. With a mesh, data-parallel over it."""
    options, mesh = run.options, run.mesh
    num_items = features.item_hashes.shape[0] - 1
    loss = options.resolved_loss(num_items)
    # A last all-padding row fills the final batch: no target, so no loss.
    user_hashes = np.concatenate([features.user_rows(users), features.unknown_user[None]])
    windows = np.concatenate(
        [
            _windows(sequences, options.history_seq_len),
            np.zeros((1, options.history_seq_len), np.int32),
        ]
    )
    targets = np.concatenate([windows, np.zeros((windows.shape[0], 1), np.int32)], axis=1)
    lengths = np.array([sequence.size for sequence in sequences])
    devices = 1 if mesh is None else mesh.size
    # The number of batches does not depend on the draw: count them with a throwaway one.
    steps = len(
        _length_bucketed_batches(
            lengths, options.history_seq_len, options.batch_size, np.random.default_rng(0), devices
        )
    )
    # logQ: an item's expected count among a batch's targets, the sampled softmax's columns.
    frequency = np.bincount(targets[targets > 0], minlength=num_items + 1) / max(
        np.count_nonzero(targets), 1
    )
    targets_per_batch = np.count_nonzero(targets) / steps
    with np.errstate(divide="ignore"):
        log_q = np.log(targets_per_batch * frequency).astype(np.float32)
    corpus_post = jnp.asarray(features.item_hashes)
    corpus_author = _author_hashes(corpus_post)
    # Every row of a batch scores against the whole corpus: its hashes are replicated.
    corpus = (
        (corpus_post, corpus_author)
        if mesh is None
        else distributed.replicate((corpus_post, corpus_author), mesh)
    )

    def objective(model, example):
        return all_positions_objective(model, example, loss)

    rng = np.random.default_rng([options.seed, 1])

    def epoch_examples():
        batches = _length_bucketed_batches(
            lengths, options.history_seq_len, options.batch_size, rng, devices
        )
        for rows, width in batches:
            batch_targets = targets[rows, : width + 1]
            batch, example_targets, target_log_q = _on_mesh(
                (
                    _batch(
                        user_hashes[rows],
                        windows[rows, :width],
                        np.zeros((rows.size, 0), np.int32),
                        corpus_post,
                    ),
                    jnp.asarray(batch_targets),
                    jnp.asarray(log_q[batch_targets]),
                ),
                mesh,
            )
            yield SequenceExample(
                batch=batch,
                targets=example_targets,
                target_log_q=target_log_q,
                corpus_post_hashes=corpus[0],
                corpus_author_hashes=corpus[1],
            )

    return _run_epochs(
        "retrieval",
        retriever,
        objective,
        options.epochs,
        steps,
        epoch_examples,
        lambda model: validation.metrics(model, None, options),
        run,
        deadline,
    )


@eqx.filter_jit
def _retrieved_at_cuts(
    retriever: TrainableRetriever,
    item_vectors: Float[Array, "rows emb"],
    item_hashes: Int[Array, "rows item_hashes"],
    users: Int[Array, "batch user_hashes"],
    windows: Int[Array, "batch history"],
    cut_rows: Int[Array, " cuts"],
    cut_items: Int[Array, " cuts"],
    exclude: Int[Array, "cuts excluded"],
    k: int,
) -> Int[Array, "cuts k"]:
    """Retrieval's top `k` for each cut prefix `[user | windows[cut_rows[i], :cut_items[i]]]`
    (never the rows in `exclude`), from one pass over the whole windows: a prefix's user
    vector is `encode_all_prefixes`' row for it."""
    batch = _batch(users, windows, jnp.zeros((windows.shape[0], 0), jnp.int32), item_hashes)
    prefixes, _ = retriever.model.encode_all_prefixes(batch, retriever.tables(batch))
    retrieved, _ = _top_unseen(prefixes[cut_rows, cut_items], item_vectors, exclude, k)
    return retrieved


def _train_ranker(
    ranker: TrainableRanker,
    retriever: TrainableRetriever,
    sequences: list[np.ndarray],
    actions: list[np.ndarray],
    users: list,
    features: FeatureHashes,
    validation: _Validation,
    run: _FitRun,
    deadline: float,
) -> tuple[TrainableRanker, dict[str, float]]:
    """The ranker on what retrieval returns. A step encodes `batch_size` users' sequences once
    and cuts each at `ranker_positions_per_user` random positions: a cut's candidates are its
    true next item plus negatives drawn from the retriever's top `num_retrieved` for that
    prefix, scored against the cut prefix (`TrainableRanker.score_at_cuts`), so candidate
    isolation keeps them independent (`sequences[i]`, `actions[i]` are `users[i]`'s). With a
    mesh, data-parallel over it."""
    options, mesh = run.options, run.mesh
    num_items = features.item_hashes.shape[0] - 1
    history_seq_len, batch_size = options.history_seq_len, options.batch_size
    cuts_per_user = options.ranker_positions_per_user
    num_negatives = min(options.ranker_candidates - 1, num_items - 1)
    num_pool = min(max(options.num_retrieved, num_negatives), num_items - 1)
    item_hashes = jnp.asarray(features.item_hashes)
    vectors = _item_vectors(retriever, item_hashes)
    user_hashes = np.concatenate([features.user_rows(users), features.unknown_user[None]])
    windows = np.concatenate(
        [_windows(sequences, history_seq_len), np.zeros((1, history_seq_len), np.int32)]
    )
    lengths = np.array([min(sequence.size, history_seq_len) for sequence in sequences] + [1])
    action_windows = np.zeros((*windows.shape, len(ACTIONS)), np.float32)
    for row, user_actions in enumerate(actions):
        latest = user_actions[-history_seq_len:]
        action_windows[row, : latest.shape[0]] = latest
    loss_weights = jnp.asarray(options.weight_vector() != 0, jnp.float32)

    def objective(model, example):
        prefixes, cut_rows, cut_lengths, candidates, labels = example
        logits = model.score_at_cuts(prefixes, cut_rows, cut_lengths, candidates)
        value = ranking_loss(logits, labels, candidates.candidate_valid, loss_weights)
        return value, {"loss": value, "targets": jnp.sum(candidates.candidate_valid)}

    rng = np.random.default_rng([options.seed, 2])
    steps = math.ceil(len(sequences) / batch_size)
    # Cuts are user-major (user `i`'s are `i * cuts_per_user ...`), so a process's share of the
    # users and its share of the cuts are the same slice of each.
    cut_rows = np.repeat(np.arange(batch_size), cuts_per_user)

    def epoch_examples():
        order = rng.permutation(len(sequences))
        for index in range(steps):
            rows = _padded_rows(
                order[index * batch_size : (index + 1) * batch_size], batch_size, len(sequences)
            )
            # A cut keeps a user's first `cut_items` items; the next one is its positive.
            cut_items = rng.integers(0, lengths[rows][:, None], (batch_size, cuts_per_user))
            cut_items = cut_items.reshape(-1)
            cut_users = rows[cut_rows]
            keep = np.arange(history_seq_len)[None, :] < cut_items[:, None]
            histories = np.where(keep, windows[cut_users], 0)
            positives = windows[cut_users, cut_items]
            retrieved = _retrieved_at_cuts(
                retriever,
                vectors,
                item_hashes,
                jnp.asarray(user_hashes[rows]),
                jnp.asarray(windows[rows]),
                jnp.asarray(cut_rows),
                jnp.asarray(cut_items),
                jnp.asarray(np.concatenate([histories, positives[:, None]], axis=1)),
                num_pool,
            )
            # Negatives drawn uniformly from what retrieval hands the ranker at serving time
            # (its top `num_retrieved`): negatives from its very top alone teach the ranker
            # that retrieval's favourites are wrong, and it then demotes the right item.
            picks = np.argsort(rng.random(retrieved.shape), axis=1)[:, :num_negatives]
            negatives = np.take_along_axis(np.asarray(retrieved), picks, axis=1)
            candidates = np.concatenate([positives[:, None], np.maximum(negatives, 0)], axis=1)
            candidates[positives == 0] = 0  # the all-padding row that fills the batch
            labels = np.zeros((*candidates.shape, len(ACTIONS)), np.float32)
            labels[:, 0] = action_windows[cut_users, cut_items]
            empty = np.zeros((batch_size, 0), np.int32)
            yield _on_mesh(
                (
                    _batch(user_hashes[rows], windows[rows], empty, item_hashes),
                    jnp.asarray(cut_rows),
                    jnp.asarray(cut_items + 1),  # the user token and the kept items
                    _batch(user_hashes[cut_users], histories, candidates, item_hashes),
                    jnp.asarray(labels),
                ),
                mesh,
            )

    return _run_epochs(
        "ranker",
        ranker,
        objective,
        options.ranker_epochs,
        steps,
        epoch_examples,
        lambda model: validation.metrics(retriever, model, options),
        run,
        deadline,
    )


@dataclasses.dataclass(frozen=True)
class _IndexedLog:
    """A validated log: items as rows `1..num_items`, each user's rows and actions in time order."""

    item_ids: list
    user_ids: list
    sequences: list[np.ndarray]
    actions: list[np.ndarray]


def _index_log(user_ids, item_ids, timestamps, ratings) -> _IndexedLog:
    users = _ids(user_ids, "user_ids")
    items = _ids(item_ids, "item_ids")
    if not users:
        raise ValueError("user_ids: expected at least one interaction, got none")
    if len(items) != len(users):
        raise ValueError(f"item_ids: expected {len(users)} ids like user_ids, got {len(items)}")
    times = _numbers(timestamps, "timestamps", len(users))
    engagement = (
        _engaged_actions(len(users))
        if ratings is None
        else rating_actions(_numbers(ratings, "ratings", len(users)))
    )
    item_rows: dict[Hashable, int] = {}
    rows = np.array([item_rows.setdefault(item, len(item_rows) + 1) for item in items], np.int32)
    user_index: dict[Hashable, int] = {}
    user_rows = np.array([user_index.setdefault(user, len(user_index)) for user in users])
    # Time order within each user; ties keep the input order.
    order = np.lexsort((np.arange(len(users)), times, user_rows))
    bounds = np.cumsum(np.bincount(user_rows, minlength=len(user_index)))[:-1]
    return _IndexedLog(
        item_ids=list(item_rows),
        user_ids=list(user_index),
        sequences=np.split(rows[order], bounds),
        actions=np.split(engagement[order], bounds),
    )


class Recommender:
    """Phoenix's two stages fitted to one interaction log; see `fit`, `recommend`, `save`."""

    def __init__(
        self,
        retriever: TrainableRetriever,
        ranker: TrainableRanker,
        options: FitOptions,
        item_ids: list,
        histories: dict[Hashable, np.ndarray],
        *,
        use_ranker: bool,
        validation: dict[str, dict[str, float]],
        validation_history: Sequence[ValidationRecord] = (),
        features: FeatureHashes | None = None,
    ):
        """Prefer `Recommender.fit` or `Recommender.load`; this assembles their results.

        `validation` holds each stage's best validation metrics; `validation_history` one
        `(seconds since fit started, stage, epoch, HR@10)` record per validation run by fit;
        `features` the side features' hashes of the items and of the users in `histories`
        (None: the ids alone).
        """
        self.retriever, self.ranker, self.options = retriever, ranker, options
        self.item_ids = item_ids
        self.histories = histories
        self.use_ranker = use_ranker
        self.validation = validation
        self.validation_history = [tuple(record) for record in validation_history]
        self.features = feature_hashes(item_ids, list(histories)) if features is None else features
        self._item_rows = {item: row for row, item in enumerate(item_ids, start=1)}
        self._item_hashes = jnp.asarray(self.features.item_hashes)
        self._item_vectors = _item_vectors(retriever, self._item_hashes)

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    @classmethod
    def fit(
        cls,
        user_ids: Sequence[Hashable] | np.ndarray,
        item_ids: Sequence[Hashable] | np.ndarray,
        timestamps: Sequence[float] | np.ndarray,
        ratings: Sequence[float] | np.ndarray | None = None,
        *,
        item_features: SideFeatures | None = None,
        user_features: SideFeatures | None = None,
        options: FitOptions | None = None,
        mesh: Mesh | None = None,
    ) -> "Recommender":
        """Train retrieval, then the ranker, on the interactions `(user, item, time, rating)`.

        Ids are any hashable values; `ratings=None` means implicit feedback (every row an
        engagement), explicit ratings become actions as `data.RATING_ACTIONS` says. Each
        user's last interaction (by time, ties in input order) is held out for validation: it
        alone picks the best epoch of each stage and whether the ranker's order beats
        retrieval's. Raises ValueError, before any training, on malformed input.

        `item_features`, `user_features`: optional categorical side features,
        `{column name: {item (user) id: value}}` with hashable values; each column becomes one
        more hash of the items (users), as Phoenix's extra hashes (see `FeatureHashes`). Ids
        missing from a column get padding there. Without them the model uses ids alone.

        `mesh`: a one-axis mesh named "batch" (`distributed.global_mesh("batch")`, every device
        of every process under `jax.distributed`) to train both stages data-parallel on, the
        models replicated; every process then calls `fit` with the same arguments. Training
        equals the single-device run up to float reduction order while every batch's rows
        divide by the devices: `options.batch_size` must, and a shorter-sequence batch's
        `batch_size * history_seq_len // width` rows are rounded down to a multiple of them.
        Each process validates, and returns, its own replica on one device.
        """
        options = FitOptions() if options is None else options
        if not isinstance(options, FitOptions):
            raise ValueError(f"options: expected FitOptions, got {type(options).__name__}")
        if mesh is not None:
            if tuple(mesh.axis_names) != ("batch",):
                raise ValueError(
                    f"mesh: expected one axis named 'batch' (distributed.global_mesh('batch')), "
                    f"got axes {tuple(mesh.axis_names)}"
                )
            if options.batch_size % mesh.size:
                raise ValueError(
                    f"options.batch_size: expected a multiple of the mesh's {mesh.size} devices, "
                    f"got {options.batch_size}"
                )
        log = _index_log(user_ids, item_ids, timestamps, ratings)
        features = feature_hashes(
            log.item_ids,
            log.user_ids,
            feature_columns(item_features, "item_features", log.item_ids),
            feature_columns(user_features, "user_features", log.user_ids),
        )
        held_out = [i for i, sequence in enumerate(log.sequences) if sequence.size >= 2]
        if not held_out:
            raise ValueError(
                "user_ids: expected some user with two or more interactions (the last one is "
                "held out for validation), got none"
            )
        train = [sequence[:-1] if sequence.size >= 2 else sequence for sequence in log.sequences]
        train_actions = [
            actions[:-1] if actions.shape[0] >= 2 else actions for actions in log.actions
        ]
        validation = _Validation(
            users=features.user_rows([log.user_ids[i] for i in held_out]),
            histories=_windows([train[i] for i in held_out], options.history_seq_len),
            excluded=_excluded([train[i] for i in held_out]),
            targets=np.array([log.sequences[i][-1] for i in held_out]),
            item_hashes=jnp.asarray(features.item_hashes),
        )
        console = Console(quiet=not options.verbose)
        start = time.perf_counter()
        budget = math.inf if options.time_budget_s is None else options.time_budget_s
        retriever, ranker = _build_models(options, features, key=jax.random.key(options.seed))
        console.print(
            f"fit: {len(log.user_ids):,} users, {len(log.item_ids):,} items, "
            f"{sum(s.size for s in log.sequences):,} interactions; validating on "
            f"{len(held_out):,} held-out last items; loss "
            f"{options.resolved_loss(len(log.item_ids))!r}; side features "
            f"{list(features.item_columns + features.user_columns) or 'none'}"
        )
        history: list[ValidationRecord] = []
        run = _FitRun(options, console, start, history, mesh)
        retriever, retrieval_metrics = _train_retriever(
            retriever,
            train,
            log.user_ids,
            features,
            validation,
            run,
            start + budget * options.retrieval_share,
        )
        results = {"retrieval": retrieval_metrics}
        use_ranker = options.ranker_epochs > 0
        if use_ranker:
            ranker, results["ranker"] = _train_ranker(
                warm_start_ranker(ranker, retriever) if options.ranker_warm_start else ranker,
                retriever,
                train,
                train_actions,
                log.user_ids,
                features,
                validation,
                run,
                start + budget,
            )
            # Model selection on validation: serve the ranker's order only where it helps.
            use_ranker = results["ranker"]["hr@10"] >= retrieval_metrics["hr@10"]
        console.print(
            f"fit: done in {time.perf_counter() - start:.0f}s; serving "
            f"{'retrieval + ranker' if use_ranker else 'retrieval alone'}"
        )
        histories = dict(zip(log.user_ids, log.sequences, strict=True))
        return cls(
            retriever,
            ranker,
            options,
            log.item_ids,
            histories,
            use_ranker=use_ranker,
            validation=results,
            validation_history=history,
            features=features,
        )

    def recommend(
        self,
        user_ids: Sequence[Hashable] | np.ndarray,
        histories: Sequence[Sequence[Hashable] | np.ndarray] | None = None,
        k: int = 10,
        exclude_seen: bool = True,
        *,
        use_ranker: bool | None = None,
    ) -> tuple[np.ndarray, Float[np.ndarray, "users k"]]:
        """The top `k` items of each user, best first: original item ids `[U, k]` and scores.

        `histories[i]` is user `i`'s items in time order (original ids); items unknown to
        the model are dropped, with one warning counting them. With `histories=None` each
        user's whole log from `fit` is used (the users must be known). Users known from fit
        bring their side features; others get padding for them. `exclude_seen` drops
        the history's items. Scores are the weighted action probabilities of the ranker (or
        retrieval's dot products when validation chose retrieval alone). Should fewer than
        `k` items remain, the tail holds None with score -inf. `use_ranker` overrides
        validation's choice of stages: True re-ranks retrieval's items with the ranker, False
        serves retrieval's order (e.g. to show what each stage does).
        """
        use_ranker = self._resolve_use_ranker(use_ranker)
        users = _ids(user_ids, "user_ids")
        if not users:
            raise ValueError("user_ids: expected at least one user, got none")
        if (
            isinstance(k, bool)
            or not isinstance(k, int | np.integer)
            or not 1 <= k <= self.num_items
        ):
            raise ValueError(f"k: expected an int in 1..{self.num_items} (the items), got {k!r}")
        sequences = self._sequences(users, histories)
        excluded = _excluded(sequences if exclude_seen else [np.zeros(0, np.int32)] * len(users))
        rows, scores = _rank_in_chunks(
            self.retriever,
            self.ranker if use_ranker else None,
            self._item_vectors,
            self._item_hashes,
            self.features.user_rows(users),
            _windows(sequences, self.options.history_seq_len),
            excluded,
            self.options,
            int(k),
        )
        lookup = np.array([None, *self.item_ids], dtype=object)
        items = lookup[np.maximum(rows, 0)]
        if all(isinstance(item, int) for item in self.item_ids) and (rows > 0).all():
            items = items.astype(np.int64)
        return items, scores

    def score_items(
        self,
        user_ids: Sequence[Hashable] | np.ndarray,
        histories: Sequence[Sequence[Hashable] | np.ndarray] | None = None,
        exclude_seen: bool = True,
        *,
        use_ranker: bool | None = None,
    ) -> Float[np.ndarray, "users items"]:
        """Scores `[U, num_items]` of every item for each user, columns in `item_ids` order:
        the full-corpus ranking whose first `k` (`k <= num_retrieved`) `recommend` serves.

        Arguments as in `recommend`. Retrieval alone: the dot products of user and item
        vectors. With the ranker (`use_ranker`, default validation's choice): the
        `num_retrieved` items retrieval returns get the ranker's weighted action
        probabilities and come first, in the ranker's order; every other item follows in
        retrieval's order (its dot product shifted below the lowest ranker score).
        `exclude_seen`: the history's items score -inf and are not among those retrieved.
        """
        use_ranker = self._resolve_use_ranker(use_ranker)
        users = _ids(user_ids, "user_ids")
        if not users:
            raise ValueError("user_ids: expected at least one user, got none")
        sequences = self._sequences(users, histories)
        windows = _windows(sequences, self.options.history_seq_len)
        user_hashes = self.features.user_rows(users)
        scores = np.concatenate(
            [
                np.asarray(
                    _retrieval_scores(
                        self.retriever,
                        self._item_vectors,
                        self._item_hashes,
                        user_hashes[start:stop],
                        windows[start:stop],
                    )
                )
                for start, stop in _chunk_bounds(len(users))
            ]
        )
        if exclude_seen:
            for row, sequence in enumerate(sequences):
                scores[row, sequence] = -np.inf
        if use_ranker:
            excluded = _excluded(
                sequences if exclude_seen else [np.zeros(0, np.int32)] * len(users)
            )
            num_retrieved = min(self.options.num_retrieved, self.num_items)
            rows, ranked = _rank_in_chunks(
                self.retriever,
                self.ranker,
                self._item_vectors,
                self._item_hashes,
                user_hashes,
                windows,
                excluded,
                self.options,
                num_retrieved,
            )
            finite = np.where(np.isfinite(scores), scores, np.nan)
            shift = np.nanmin(np.where(rows > 0, ranked, np.nan), axis=1) - 1.0
            scores = scores - np.nanmax(finite, axis=1, keepdims=True) + shift[:, None]
            users_axis = np.broadcast_to(np.arange(len(users))[:, None], rows.shape)
            kept = rows > 0
            scores[users_axis[kept], rows[kept]] = ranked[kept]
        return scores[:, 1:]

    def _resolve_use_ranker(self, use_ranker: bool | None) -> bool:
        if use_ranker is None:
            return self.use_ranker
        if use_ranker and self.options.ranker_epochs == 0:
            raise ValueError("use_ranker: expected False or None, the ranker was not trained")
        return use_ranker

    def _sequences(
        self, users: list, histories: Sequence[Sequence[Hashable] | np.ndarray] | None
    ) -> list[np.ndarray]:
        """Each user's item rows in time order: from `histories` (unknown items dropped, with
        one warning) or, with None, from fit's log."""
        if histories is None:
            unknown = [user for user in users if user not in self.histories]
            if unknown:
                raise ValueError(
                    f"user_ids: without histories every user must be known from fit, "
                    f"got {len(unknown)} unknown (first {unknown[0]!r})"
                )
            sequences = [self.histories[user] for user in users]
        else:
            if isinstance(histories, str | bytes) or len(histories) != len(users):
                raise ValueError(
                    f"histories: expected {len(users)} sequences (one per user), "
                    f"got {len(histories) if hasattr(histories, '__len__') else histories!r}"
                )
            sequences, dropped = [], 0
            for index, history in enumerate(histories):
                history = _ids(history, f"histories[{index}]")
                if not history:
                    raise ValueError(f"histories[{index}]: expected at least one item, got none")
                known = [self._item_rows[item] for item in history if item in self._item_rows]
                dropped += len(history) - len(known)
                sequences.append(np.array(known, np.int32))
            if dropped:
                warnings.warn(
                    f"histories: dropped {dropped} item ids unknown to the model", stacklevel=3
                )
        return sequences

    def save(self, directory: str | os.PathLike) -> None:
        """Write the models (`eqx.tree_serialise_leaves`), options, ids, histories and the side
        features' hashes (JSON, npz; no pickle) into `directory`, created if needed."""
        for name, ids in (("item_ids", self.item_ids), ("user_ids", list(self.histories))):
            bad = next((i for i in ids if not isinstance(i, str | int | float)), None)
            if bad is not None:
                raise ValueError(f"{name}: save needs str, int or float ids, got {bad!r}")
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        sequences = list(self.histories.values())
        np.savez(
            path / "histories.npz",
            lengths=np.array([s.size for s in sequences], np.int64),
            items=np.concatenate(sequences).astype(np.int32),
        )
        np.savez(
            path / "features.npz",
            item_hashes=self.features.item_hashes,
            user_hashes=self.features.user_rows(list(self.histories)),
        )
        eqx.tree_serialise_leaves(path / "models.eqx", (self.retriever, self.ranker))
        meta = {
            "format_version": FORMAT_VERSION,
            "options": dataclasses.asdict(self.options),
            "item_ids": self.item_ids,
            "user_ids": list(self.histories),
            "use_ranker": self.use_ranker,
            "validation": self.validation,
            "validation_history": self.validation_history,
            "features": {
                "item_columns": self.features.item_columns,
                "user_columns": self.features.user_columns,
                "num_post_rows": self.features.num_post_rows,
                "num_user_rows": self.features.num_user_rows,
            },
        }
        (path / "recommender.json").write_text(json.dumps(meta))

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "Recommender":
        """A `Recommender` written by `save`; recommends exactly as the saved one did."""
        path = Path(directory)
        names = ("recommender.json", "models.eqx", "histories.npz", "features.npz")
        files = [path / name for name in names]
        missing = [file.name for file in files if not file.is_file()]
        if missing:
            raise ValueError(
                f"directory: expected a saved Recommender in {str(path)!r}, missing {missing}"
            )
        try:
            meta = json.loads(files[0].read_text())
            options = FitOptions(
                **{
                    **meta["options"],
                    "action_weights": tuple(
                        (name, weight) for name, weight in meta["options"]["action_weights"]
                    ),
                }
            )
            if meta["format_version"] != FORMAT_VERSION:
                raise ValueError(f"format_version {meta['format_version']}")
            stored = np.load(files[2], allow_pickle=False)
            sequences = np.split(stored["items"], np.cumsum(stored["lengths"])[:-1])
            hashes = np.load(files[3], allow_pickle=False)
            features = FeatureHashes(
                item_columns=tuple(meta["features"]["item_columns"]),
                user_columns=tuple(meta["features"]["user_columns"]),
                item_hashes=hashes["item_hashes"],
                user_hashes=dict(zip(meta["user_ids"], hashes["user_hashes"], strict=True)),
                num_post_rows=meta["features"]["num_post_rows"],
                num_user_rows=meta["features"]["num_user_rows"],
            )
            skeleton = _build_models(options, features, key=jax.random.key(0))
            retriever, ranker = eqx.tree_deserialise_leaves(files[1], skeleton)
        except (OSError, KeyError, TypeError, ValueError) as error:
            raise ValueError(
                f"directory: unreadable saved Recommender in {str(path)!r}: {error}"
            ) from None
        return cls(
            retriever,
            ranker,
            options,
            meta["item_ids"],
            dict(zip(meta["user_ids"], sequences, strict=True)),
            use_ranker=meta["use_ranker"],
            validation=meta["validation"],
            validation_history=[tuple(r) for r in meta.get("validation_history", [])],
            features=features,
        )


Interactions = tuple[list[Hashable], list[Hashable], np.ndarray, np.ndarray | None]


def _interaction_columns(
    path: str | os.PathLike,
    columns: Sequence[str],
    read_column: Callable[[str], list],
    *,
    user: str,
    item: str,
    timestamp: str,
    rating: str | None,
) -> Interactions:
    """`(user_ids, item_ids, timestamps, ratings)` from a file with `columns`, read a column
    at a time by `read_column`; each named column must exist, timestamps and ratings be
    numbers."""
    named = [("user", user), ("item", item), ("timestamp", timestamp)]
    for argument, column in named + ([("rating", rating)] if rating is not None else []):
        if column not in columns:
            raise ValueError(
                f"{argument}: expected a column of {path}, got {column!r} "
                f"(columns: {list(columns)})"
            )

    def numbers(column: str, argument: str) -> np.ndarray:
        try:
            return np.array([float(value) for value in read_column(column)], np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"{argument}: expected numbers in column {column!r}") from None

    return (
        read_column(user),
        read_column(item),
        numbers(timestamp, "timestamp"),
        numbers(rating, "rating") if rating is not None else None,
    )


def read_interactions_csv(
    path: str | os.PathLike,
    *,
    user: str,
    item: str,
    timestamp: str,
    rating: str | None = None,
) -> Interactions:
    """`(user_ids, item_ids, timestamps, ratings)` from a CSV file with a header row, ready
    for `Recommender.fit(*read_interactions_csv(...))`. Ids stay strings; `rating=None`
    gives `ratings=None` (implicit feedback)."""
    try:
        handle = open(path, newline="", encoding="utf-8")
    except OSError as error:
        raise ValueError(f"path: cannot read {str(path)!r}: {error}") from None
    with handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        records = list(reader)
    return _interaction_columns(
        path,
        columns,
        lambda column: [record[column] for record in records],
        user=user,
        item=item,
        timestamp=timestamp,
        rating=rating,
    )


def read_interactions_parquet(
    path: str | os.PathLike,
    *,
    user: str,
    item: str,
    timestamp: str,
    rating: str | None = None,
) -> Interactions:
    """`(user_ids, item_ids, timestamps, ratings)` from a Parquet file, by column name, as
    `read_interactions_csv` gives them (ids keep their Parquet type: strings stay strings,
    integers ints). Needs pyarrow: `pip install phoenix-eqx[parquet]`."""
    try:
        import pyarrow.parquet as parquet
    except ImportError:
        raise ImportError(
            "read_interactions_parquet needs pyarrow: pip install phoenix-eqx[parquet]"
        ) from None
    try:
        columns = parquet.read_schema(path).names
    except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError
        raise ValueError(f"path: cannot read {str(path)!r}: {error}") from None
    return _interaction_columns(
        path,
        columns,
        # Only the named columns are read, one at a time.
        lambda column: parquet.read_table(path, columns=[column]).column(0).to_pylist(),
        user=user,
        item=item,
        timestamp=timestamp,
        rating=rating,
    )
