"""`FitOptions`: how `Recommender.fit` builds, trains and serves the two Phoenix stages.

One hierarchy: `FitOptions` is every group below at once (model, optimisation, retrieval
stage, ranker stage, serving), so `FitOptions(emb_size=32, ranker_epochs=0)` sets fields of
any group. Every field has a default; the defaults were chosen on MovieLens-1M validation
items (docs/recommender.md). One rule for every number: ints are Python or NumPy integers
(never bools), floats are finite; each error names the field.
"""

import dataclasses
import math
from collections.abc import Callable, Iterator
from typing import Literal

import numpy as np
from jaxtyping import PyTree

from ..config import ACTIONS
from ..training.loop import Schedule, Stage
from ..training.row_updates import RowsOf
from ..training.sequential import SequenceLoss

# The most history slots a model reads (the MovieLens-1M protocol's window).
MAX_HISTORY_SEQ_LEN = 200
# Seeds feed NumPy's and JAX's generators: both take unsigned 32-bit integers.
MAX_SEED = 2**32 - 1


def _int(options, name: str, minimum: int, maximum: int | None = None) -> None:
    value = getattr(options, name)
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name}: expected an int, got {value!r} ({type(value).__name__})")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"in {minimum}..{maximum}"
        raise ValueError(f"{name}: expected an int {bound}, got {value}")
    object.__setattr__(options, name, int(value))


def _float(
    options,
    name: str,
    *,
    low: float,
    high: float,
    closed_low: bool = True,
    closed_high: bool = True,
) -> None:
    value = getattr(options, name)
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | float | np.number):
        raise ValueError(f"{name}: expected a number, got {value!r} ({type(value).__name__})")
    value = float(value)
    inside = (value >= low if closed_low else value > low) and (
        value <= high if closed_high else value < high
    )
    if not math.isfinite(value) or not inside:
        interval = f"{'[' if closed_low else '('}{low}, {high}{']' if closed_high else ')'}"
        raise ValueError(f"{name}: expected a finite number in {interval}, got {value}")
    object.__setattr__(options, name, value)


def _bool(options, name: str) -> None:
    value = getattr(options, name)
    if not isinstance(value, bool | np.bool_):
        raise ValueError(f"{name}: expected True or False, got {value!r}")
    object.__setattr__(options, name, bool(value))


def _choice(options, name: str, choices: tuple[str, ...]) -> None:
    value = getattr(options, name)
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name}: expected one of {choices}, got {value!r}")


class _Checked:
    """Runs every group's `_check` once, whichever groups a class combines."""

    def __post_init__(self):
        for group in reversed(type(self).__mro__):
            if "_check" in vars(group):
                vars(group)["_check"](self)


@dataclasses.dataclass(frozen=True)
class ModelOptions(_Checked):
    """The size and shape of both Phoenix models."""

    emb_size: int = 64
    """Width of every embedding and of both transformers."""
    num_layers: int = 2
    """Transformer layers of each model."""
    num_heads: int = 2
    """Attention heads (query and key/value alike)."""
    key_size: int = 32
    """Width of one attention head; even (rotary positions)."""
    history_seq_len: int = 200
    """How many of a user's latest items the models read (1..200)."""
    user_pooling: Literal["mean", "last"] = "last"
    """How the retrieval tower's outputs become the user vector (see
    `PhoenixRetrievalModelConfig.user_pooling`)."""
    table_init_std: float = 0.05
    """Initial standard deviation of the hash-embedding tables (`HashEmbeddingTables`)."""

    def _check(self):
        for name in ("emb_size", "num_layers", "num_heads", "key_size"):
            _int(self, name, 1)
        if self.key_size % 2:
            raise ValueError(f"key_size: expected even (rotary), got {self.key_size}")
        _int(self, "history_seq_len", 1, MAX_HISTORY_SEQ_LEN)
        _choice(self, "user_pooling", ("mean", "last"))
        _float(self, "table_init_std", low=0.0, high=math.inf, closed_low=False)


@dataclasses.dataclass(frozen=True)
class OptimizationOptions(_Checked):
    """How both stages step, stop and share the time budget."""

    batch_size: int = 16
    """Sequences of the full `history_seq_len` per step (proportionally more shorter ones)."""
    learning_rate: float = 2e-3
    """Retrieval's Adam learning rate (gradients clipped to global norm 1); the ranker has
    its own, `ranker_learning_rate`."""
    weight_decay: float = 0.0
    """AdamW's decoupled weight decay for both stages (0: Adam): each step every matrix,
    embedding tables included, shrinks by `rate * weight_decay` of itself."""
    learning_rate_decay_share: float = 0.0
    """The last share of each stage over which the rate falls along a half cosine to zero
    (0: never; 1: the whole stage)."""
    patience: int = 5
    """Epochs without a better validation HR@10 (or equal HR@10 and better NDCG@10) before
    a stage stops (the best is kept)."""
    time_budget_s: float | None = None
    """Wall-clock cap of `fit`, in seconds from its call (None: the epochs alone end it).
    Checked after every step; each stage keeps its last validation's time free, so the epoch
    it cuts is validated within the cap, and the ranker starts only if more time is left than
    retrieval's first step and first validation took. Not capped, so fit can exceed it by
    their sum: the time before the first step (5-7 s in a fresh process, which starts JAX
    then), the step in flight when time runs out, with its compilation when its shapes are new
    (each stage's first step: 5-9 s), and the first validation of a stage that has validated
    no epoch yet (it compiles: 3-8 s). Measured on the 2-core CPU machine, default options:
    budgets of 2 s and 5 s took 14 s (5 s took 32 s before this cap), 60 s took 66 s (the
    ranker's first validation). With the co-occurrence prior, the ranker stops that much
    earlier again (retrieval's first step and validation) to leave its weight's choice time;
    past the budget, fit serves the ranker without it. fit's last console line gives its time
    against the budget."""
    retrieval_share: float = 0.75
    """The share of `time_budget_s` that retrieval gets; the ranker has the rest (and what
    retrieval leaves when patience stops it early)."""
    seed: int = 0
    """Fixes initialisation and data order (0..2**32-1)."""
    validation_users: int | None = 10_000
    """The most users whose last item validation holds out and ranks, a random sample fixed
    by `seed` (None: every user with two or more items); the others train on their whole
    sequence. A validation pass ranks the whole corpus for each of them, about 1 ms per user
    at a million items on a 2-core CPU (docs/scaling-costs.md), so that the cap keeps it a
    small share of a fit's budget there; MovieLens-1M's 6,040 users are all validated."""

    def _check(self):
        _int(self, "batch_size", 1)
        _float(self, "learning_rate", low=0.0, high=math.inf, closed_low=False)
        _float(self, "weight_decay", low=0.0, high=math.inf)
        _float(self, "learning_rate_decay_share", low=0.0, high=1.0)
        _int(self, "patience", 1)
        if self.time_budget_s is not None:
            _float(self, "time_budget_s", low=0.0, high=math.inf, closed_low=False)
        _float(self, "retrieval_share", low=0.0, high=1.0, closed_low=False)
        _int(self, "seed", 0, MAX_SEED)
        if self.validation_users is not None:
            _int(self, "validation_users", 1)

    def schedule(self, learning_rate: float | None = None) -> Schedule:
        """A stage's optimiser and learning-rate schedule: Adam(W) at `learning_rate` (None:
        the `learning_rate` field), decaying as `learning_rate_decay_share` says."""
        rate = self.learning_rate if learning_rate is None else learning_rate
        return Schedule(rate, self.learning_rate_decay_share, self.weight_decay)

    def stage(
        self,
        name: str,
        learning_rate: float,
        epochs: int,
        steps: int,
        deadline: float,
        epoch_examples: Callable[[], Iterator[PyTree]],
        evaluate: Callable[[PyTree], dict[str, float]],
        rows_of: RowsOf | None = None,
    ) -> Stage:
        """A stage of `fit` that steps and stops as these options say (`training.loop`);
        `rows_of`: see `Stage`."""
        return Stage(
            name=name,
            schedule=self.schedule(learning_rate),
            epochs=epochs,
            steps=steps,
            patience=self.patience,
            deadline=deadline,
            epoch_examples=epoch_examples,
            evaluate=evaluate,
            rows_of=rows_of,
        )


@dataclasses.dataclass(frozen=True)
class RetrievalStageOptions(_Checked):
    """The retrieval stage: every position of every sequence a target."""

    epochs: int = 100
    """Most passes over the users."""
    loss: Literal["auto", "full", "sampled"] = "auto"
    """`"full"`: softmax over every item; `"sampled"`: in-batch negatives with logQ
    correction; `"auto"`: full up to `full_softmax_max_items` items."""
    full_softmax_max_items: int = 50_000
    """The most items `"auto"` trains with the full softmax."""
    dropout: float = 0.0
    """Share of the history's embedding entries each retrieval step zeroes (inverted
    dropout: the rest scale by `1 / (1 - dropout)`), against overfitting a small log;
    0: none. Serving and validation never drop."""

    def _check(self):
        _int(self, "epochs", 1)
        _float(self, "dropout", low=0.0, high=1.0, closed_high=False)
        _choice(self, "loss", ("auto", "full", "sampled"))
        _int(self, "full_softmax_max_items", 1)

    def resolved_loss(self, num_items: int) -> SequenceLoss:
        """The loss `loss` names for a corpus of `num_items` items."""
        if self.loss != "auto":
            return self.loss
        return "full" if num_items <= self.full_softmax_max_items else "sampled"


@dataclasses.dataclass(frozen=True)
class RankerStageOptions(_Checked):
    """The ranker stage: each user's sequence encoded once per step and cut at random
    positions; a cut's candidates are its true next item and negatives drawn from the
    retriever's top `num_retrieved` for that prefix."""

    ranker_epochs: int = 10
    """Most passes over the users (0: no ranker)."""
    ranker_learning_rate: float = 1e-3
    """The ranker's Adam learning rate (retrieval's is `learning_rate`): the residual ranker
    starts at retrieval's order and refines it, so it steps more gently (chosen on
    MovieLens-1M validation, docs/recommender.md)."""
    ranker_candidates: int = 32
    """Candidates per cut: the positive and `ranker_candidates - 1` negatives (>= 2)."""
    ranker_positions_per_user: int = 8
    """Cuts per user per step: the latest, then random ones (from one prefix pass)."""
    ranker_warm_start: bool = True
    """Start from the retriever's tables, transformer and history input layer
    (`training.warm_start_ranker`)."""
    ranker_history_actions: Literal["engaged", "logged"] = "logged"
    """What the ranker's history tokens say of each item: `"engaged"` (clicked and
    favorited, as retrieval's always do) or `"logged"`, the log's actions (ratings as
    `data.RATING_ACTIONS`: a 2-star item is "not interested", a 5-star one also "reposted").
    `recommend` then reads each known user's logged actions, and those given with its
    histories."""
    ranker_loss: Literal["listwise", "bce"] = "listwise"
    """`"listwise"`: the residual ranker, retrieval's logit plus a learned correction (zero
    untrained), trained with a softmax over each cut's candidates; `"bce"`: per-action sigmoid
    cross-entropy, served as weighted probabilities (before the residual ranker)."""

    def _check(self):
        _int(self, "ranker_epochs", 0)
        _float(self, "ranker_learning_rate", low=0.0, high=math.inf, closed_low=False)
        _int(self, "ranker_candidates", 1)
        if self.ranker_candidates < 2:
            raise ValueError(
                f"ranker_candidates: expected >= 2 (the positive and a negative), "
                f"got {self.ranker_candidates}"
            )
        _int(self, "ranker_positions_per_user", 1)
        _bool(self, "ranker_warm_start")
        _choice(self, "ranker_history_actions", ("engaged", "logged"))
        _choice(self, "ranker_loss", ("listwise", "bce"))

    @property
    def residual_ranker(self) -> bool:
        """Whether the ranker refines retrieval's logit (`ranker_loss="listwise"`)."""
        return self.ranker_loss == "listwise"


@dataclasses.dataclass(frozen=True)
class ServingOptions(_Checked):
    """How `recommend` serves the two stages."""

    num_retrieved: int = 200
    """Items retrieval hands the ranker."""
    action_weights: tuple[tuple[str, float], ...] = (
        ("click_score", 1.0),
        ("favorite_score", 0.25),
    )
    """`(action name, weight)` pairs: the ranker orders by `sum(weight * probability)`, or with
    `ranker_loss="listwise"` by retrieval's logit plus `sum(weight * logit)`."""
    cooccurrence_weights: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
    """Weights of the co-occurrence prior (`recommender.CooccurrencePrior`) in the served
    score (the ranker's, or retrieval's when fit trains no ranker) that validation chooses
    among (0: without it); `(0.0,)` turns it off."""
    cooccurrence_max_items: int = 50_000
    """The largest catalogue the prior is built for (its table keeps up to 200 neighbours per
    item)."""
    cooccurrence_window: int = 0
    """Which items the prior counts as co-occurring: 0, any two in one user's sequence
    (the pairs grow with each sequence's length squared); `w`, two within `w` positions of
    each other (they grow with interactions times `w`: for long sequences)."""

    def _check(self):
        _int(self, "num_retrieved", 1)
        _int(self, "cooccurrence_max_items", 1)
        _int(self, "cooccurrence_window", 0)
        weights = self.cooccurrence_weights
        if (
            not isinstance(weights, tuple | list)
            or not weights
            or any(
                isinstance(w, bool | np.bool_)
                or not isinstance(w, int | float | np.number)
                or not math.isfinite(float(w))
                or w < 0
                for w in weights
            )
        ):
            raise ValueError(
                f"cooccurrence_weights: expected a non-empty tuple of finite numbers >= 0, "
                f"got {weights!r}"
            )
        object.__setattr__(self, "cooccurrence_weights", tuple(float(w) for w in weights))
        pairs = self.action_weights
        if isinstance(pairs, str | bytes | dict) or not isinstance(pairs, tuple | list):
            raise ValueError(
                f"action_weights: expected a tuple of (action name, weight) pairs, got {pairs!r}"
            )
        checked = []
        for pair in pairs:
            if not isinstance(pair, tuple | list) or len(pair) != 2:
                raise ValueError(
                    f"action_weights: expected (action name, weight) pairs, got {pair!r}"
                )
            name, weight = pair
            if not isinstance(name, str) or name not in ACTIONS:
                raise ValueError(f"action_weights: expected names from ACTIONS, got {name!r}")
            if isinstance(weight, bool | np.bool_) or not isinstance(
                weight, int | float | np.number
            ):
                raise ValueError(f"action_weights: expected a number for {name}, got {weight!r}")
            if not math.isfinite(float(weight)):
                raise ValueError(f"action_weights: expected a finite {name} weight, got {weight}")
            checked.append((name, float(weight)))
        names = [name for name, _ in checked]
        if not names or len(set(names)) != len(names):
            raise ValueError(
                f"action_weights: expected distinct (name, weight) pairs with names from "
                f"ACTIONS, got {self.action_weights!r}"
            )
        object.__setattr__(self, "action_weights", tuple(checked))

    def weight_vector(self) -> np.ndarray:
        """`action_weights` as a `[len(ACTIONS)]` float32 vector."""
        weights = np.zeros(len(ACTIONS), np.float32)
        for name, weight in self.action_weights:
            weights[ACTIONS.index(name)] = weight
        return weights


@dataclasses.dataclass(frozen=True)
class FitOptions(
    ModelOptions, OptimizationOptions, RetrievalStageOptions, RankerStageOptions, ServingOptions
):
    """Every option of `Recommender.fit`: the fields of `ModelOptions`,
    `OptimizationOptions`, `RetrievalStageOptions`, `RankerStageOptions` and `ServingOptions`,
    and `verbose`."""

    verbose: bool = True
    """Show progress bars and a line per epoch."""

    def _check(self):
        _bool(self, "verbose")
