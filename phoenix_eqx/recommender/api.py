"""`Recommender`: fit Phoenix's two stages on any interaction log, recommend, save, load."""

import dataclasses
import math
import os
import time
import warnings
from collections.abc import Hashable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jaxtyping import Float
from rich.console import Console

from ..data.feature_hashes import SideFeatures, feature_columns, feature_hashes
from ..data.interactions import rating_actions
from ..training.loop import Run, ValidationRecord
from ..training.models import TrainableRanker, TrainableRetriever, warm_start_ranker
from . import persistence
from .batches import excluded, windows
from .cooccurrence import CooccurrencePrior
from .index import ItemLookup, action_masks, as_ids, as_numbers, engaged_masks, index_log
from .models import build_models, item_vectors
from .options import FitOptions
from .ranker_stage import train_ranker
from .retrieval_stage import train_retriever
from .two_stage import chunk_bounds, rank_in_chunks, retrieval_scores
from .validation import choose_prior, hold_out_last, means, prior_applies


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
        features=None,
        history_actions: dict[Hashable, np.ndarray] | None = None,
        cooccurrence_weight: float = 0.0,
    ):
        """Prefer `Recommender.fit` or `Recommender.load`; this assembles their results.

        `validation` holds each stage's best validation metrics ("retrieval", "ranker") and,
        when a ranker was trained, "ranker_gain": its paired HR@10 / NDCG@10 difference from
        retrieval alone with standard errors ("hr@10_se"); `validation_history` one
        `(seconds since fit started, stage, epoch, HR@10)` record per validation run by fit;
        `features` the side features' hashes (`data.FeatureHashes`) of the items and of the
        users in `histories` (None: the ids alone); `history_actions` each of those users'
        action masks (`index.action_masks`), one per item of `histories` (None: every item
        engaged, as implicit feedback); `cooccurrence_weight` the weight of the co-occurrence
        prior (`CooccurrencePrior`, built from `histories`; 0: none) in the served score of
        the ranker when `validation` has one, else of retrieval.
        """
        self.retriever, self.ranker, self.options = retriever, ranker, options
        self.item_ids = item_ids
        self.histories = histories
        if history_actions is None:
            history_actions = {user: engaged_masks(items.size) for user, items in histories.items()}
        self.history_actions = history_actions
        self.use_ranker = use_ranker
        self.validation = validation
        self.validation_history = [tuple(record) for record in validation_history]
        self.features = feature_hashes(item_ids, list(histories)) if features is None else features
        self._item_rows = {item: row for row, item in enumerate(item_ids, start=1)}
        self._lookup = ItemLookup.of(item_ids)
        self._item_hashes = jnp.asarray(self.features.item_hashes)
        self._item_vectors = item_vectors(retriever, self._item_hashes)
        self.cooccurrence_weight = float(cooccurrence_weight)
        self.cooccurrence = (
            CooccurrencePrior.of(
                list(histories.values()),
                len(item_ids),
                cooccurrence_weight,
                window=options.cooccurrence_window,
            )
            if cooccurrence_weight > 0
            else None
        )

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

        Ids are any hashable values but None and NaN; `ratings=None` means implicit feedback
        (every row an engagement), explicit ratings become actions as `data.RATING_ACTIONS`
        says. Each user's last interaction (by time, ties in input order) is held out for
        validation: it alone picks the best epoch of each stage and whether the ranker's order
        beats retrieval's. Raises ValueError, before any training, on malformed input, and
        `training.loop.NonFiniteLossError` (a ValueError) at the first step whose loss is NaN
        or infinite.

        `options.time_budget_s` caps fit's wall-clock time from its call: its docstring says
        by how much fit can exceed it; the last console line gives the time taken. When
        retrieval leaves too little of it for the ranker's first step and validation, the
        ranker is not trained: fit serves retrieval alone and `validation` has no "ranker".

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
        start = time.perf_counter()
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
        log = index_log(user_ids, item_ids, timestamps, ratings)
        features = feature_hashes(
            log.item_ids,
            log.user_ids,
            feature_columns(item_features, "item_features", log.item_ids),
            feature_columns(user_features, "user_features", log.user_ids),
        )
        train, train_actions, validation = hold_out_last(log, features, options)
        console = Console(quiet=not options.verbose)
        budget = math.inf if options.time_budget_s is None else options.time_budget_s
        retriever, ranker = build_models(options, features, key=jax.random.key(options.seed))
        console.print(
            f"fit: {len(log.user_ids):,} users, {len(log.item_ids):,} items, "
            f"{sum(s.size for s in log.sequences):,} interactions; validating on "
            f"{validation.targets.size:,} held-out last items; loss "
            f"{options.resolved_loss(len(log.item_ids))!r}; side features "
            f"{list(features.item_columns + features.user_columns) or 'none'}"
        )
        history: list[ValidationRecord] = []
        run = Run(console, options.verbose, start, history, mesh)
        retriever, retrieval_metrics = train_retriever(
            retriever,
            train,
            log.user_ids,
            features,
            validation,
            options,
            run,
            start + budget * options.retrieval_share,
        )
        results = {"retrieval": retrieval_metrics}
        use_ranker = options.ranker_epochs > 0
        with_prior = prior_applies(options, len(log.item_ids))
        if with_prior and not use_ranker:
            # Served with retrieval, in what retrieval's share left: the table, the weight's
            # choice and, to serve, the table again from the whole log (about as long as the
            # first). The choice is a validation pass compiled anew (about retrieval's
            # startup), or, beside the search retrieval's validation kept, less than
            # retrieval's first validation (which compiled and searched).
            chosen = False
            if validation.prior_choice_reuses_search(retriever, options):
                choice_s = run.first_validation_s[0]
            else:
                choice_s = run.startup_s[0]
            if start + budget - time.perf_counter() >= choice_s:
                building = time.perf_counter()
                table = CooccurrencePrior.of(
                    train, len(log.item_ids), window=options.cooccurrence_window
                )
                build_s = time.perf_counter() - building
                if start + budget - time.perf_counter() >= choice_s + build_s:
                    prior, served = choose_prior(
                        retriever, None, table, validation, options, console
                    )
                    weight = 0.0 if prior is None else float(prior.weight)
                    results["cooccurrence"] = {"weight": weight, **served}
                    chosen = True
            if not chosen:
                console.print(
                    "co-occurrence prior: too little of the budget is left to build it, "
                    "choose its weight and build it again to serve: served without it"
                )
        if use_ranker:
            # Choosing the prior's weight follows the ranker: two validation passes, compiled
            # anew. Retrieval's startup (its first step and validation) is kept free for it.
            prior_reserve = run.startup_s[0] if with_prior else 0.0
            trained = train_ranker(
                warm_start_ranker(ranker, retriever) if options.ranker_warm_start else ranker,
                retriever,
                train,
                train_actions,
                log.user_ids,
                features,
                validation,
                options,
                run,
                start + budget - prior_reserve,
            )
            if trained is None:
                left = max(start + budget - time.perf_counter(), 0.0)
                console.print(
                    f"ranker: not trained, {left:.1f} s of the {budget:g} s budget left; its "
                    f"first step and validation compile and would overrun it (retrieval's took "
                    f"{run.startup_s[0]:.1f} s)"
                )
                use_ranker = False
            else:
                ranker, results["ranker"] = trained
                prior = None
                if with_prior and time.perf_counter() < start + budget:
                    table = CooccurrencePrior.of(
                        train, len(log.item_ids), window=options.cooccurrence_window
                    )
                    prior, _ = choose_prior(retriever, ranker, table, validation, options, console)
                elif with_prior:
                    console.print("co-occurrence prior: the budget is spent, served without it")
                # Both stages as served, one validation pass for their metrics and their gain.
                served = validation.per_user(retriever, ranker, options, 10, prior)
                weight = 0.0 if prior is None else float(prior.weight)
                results["cooccurrence"] = {"weight": weight, **means(served)}
                # Model selection on validation: serve the ranker's order only where it helps.
                use_ranker = results["cooccurrence"]["hr@10"] >= retrieval_metrics["hr@10"]
                results["ranker_gain"] = validation.gain_over_retrieval(retriever, served, options)
                gain = results["ranker_gain"]
                console.print(
                    f"ranker: validation HR@10 {gain['hr@10']:+.4f} ± {gain['hr@10_se']:.4f}, "
                    f"NDCG@10 {gain['ndcg@10']:+.4f} ± {gain['ndcg@10_se']:.4f} over retrieval "
                    f"alone (paired, ± one standard error)"
                )
        histories = dict(zip(log.user_ids, log.sequences, strict=True))
        history_actions = dict(zip(log.user_ids, log.actions, strict=True))
        recommender = cls(
            retriever,
            ranker,
            options,
            log.item_ids,
            histories,
            use_ranker=use_ranker,
            validation=results,
            validation_history=history,
            features=features,
            history_actions=history_actions,
            cooccurrence_weight=results.get("cooccurrence", {}).get("weight", 0.0),
        )
        # The budget's overrun, if any, measured to the end: what `time_budget_s` can't cap.
        seconds = time.perf_counter() - start
        took = f"{seconds:.1f} s"
        if not math.isinf(budget):
            over = f"{seconds - budget:.1f} s over" if seconds > budget else "within it"
            took += f" of a {budget:g} s budget ({over})"
        console.print(
            f"fit: done in {took}; serving "
            f"{'retrieval + ranker' if use_ranker else 'retrieval alone'}"
        )
        return recommender

    def recommend(
        self,
        user_ids: Sequence[Hashable] | np.ndarray,
        histories: Sequence[Sequence[Hashable] | np.ndarray] | None = None,
        k: int = 10,
        exclude_seen: bool = True,
        *,
        ratings: Sequence[Sequence[float | int] | np.ndarray] | None = None,
        use_ranker: bool | None = None,
    ) -> tuple[np.ndarray, Float[np.ndarray, "users k"]]:
        """The top `k` items of each user, best first: original item ids `[U, k]` and scores.

        `histories[i]` is user `i`'s items in time order (original ids); items unknown to
        the model are dropped, with one warning counting them. With `histories=None` each
        user's whole log from `fit` is used (the users must be known). Users known from fit
        bring their side features; others get padding for them. `exclude_seen` drops
        the history's items. Scores are the ranker's (`two_stage.two_stage` says which) or
        retrieval's dot products when validation chose retrieval alone (its logits plus the
        weighted co-occurrence prior where fit chose one for retrieval). Should fewer than
        `k` items remain, the tail holds None with score -inf. Ids come back as they went
        into `fit` (an int64 array when every item id is an int). `use_ranker` overrides
        validation's choice of stages: True re-ranks retrieval's items with the ranker, False
        serves retrieval's order (e.g. to show what each stage does).

        `ratings[i]` (only with `histories`): user `i`'s rating of each item of
        `histories[i]`, read as `fit` reads ratings (`data.RATING_ACTIONS`). A ranker fit with
        `ranker_history_actions="logged"` reads them (without them, every item given is
        engaged; users known from fit bring their logged ones); retrieval never does.
        """
        request = self._request(user_ids, histories, ratings, exclude_seen, use_ranker)
        if (
            isinstance(k, bool)
            or not isinstance(k, int | np.integer)
            or not 1 <= k <= self.num_items
        ):
            raise ValueError(f"k: expected an int in 1..{self.num_items} (the items), got {k!r}")
        rows, scores = self._rank(request, int(k))
        return self._lookup(rows), scores

    def score_items(
        self,
        user_ids: Sequence[Hashable] | np.ndarray,
        histories: Sequence[Sequence[Hashable] | np.ndarray] | None = None,
        exclude_seen: bool = True,
        *,
        ratings: Sequence[Sequence[float | int] | np.ndarray] | None = None,
        use_ranker: bool | None = None,
    ) -> Float[np.ndarray, "users items"]:
        """Scores `[U, num_items]` of every item for each user, columns in `item_ids` order:
        the full-corpus ranking whose first `k` (`k <= num_retrieved`) `recommend` serves.

        Arguments as in `recommend`. Retrieval alone: the dot products of user and item
        vectors. With the ranker (`use_ranker`, default validation's choice): the
        `num_retrieved` items retrieval returns get the ranker's scores (as `recommend`)
        and come first, in the ranker's order; every other item follows in
        retrieval's order (its dot product shifted below the lowest ranker score). So too
        retrieval served with the co-occurrence prior: its first `num_retrieved` in the
        served order and score (`two_stage.two_stage`), the rest after them.
        `exclude_seen`: the history's items score -inf and are not among those retrieved.
        """
        request = self._request(user_ids, histories, ratings, exclude_seen, use_ranker)
        scores = np.concatenate(
            [
                np.asarray(
                    retrieval_scores(
                        self.retriever,
                        self._item_vectors,
                        self._item_hashes,
                        request.user_hashes[start:stop],
                        request.windows[start:stop],
                    )
                )
                for start, stop in chunk_bounds(len(request.sequences))
            ]
        )
        if request.exclude_seen:
            for row, sequence in enumerate(request.sequences):
                scores[row, sequence] = -np.inf
        if request.use_ranker or self._served_prior(request) is not None:
            rows, ranked = self._rank(request, min(self.options.num_retrieved, self.num_items))
            # Retrieval's finite scores move below the lowest ranker score; a user with no
            # finite score (every item seen) keeps its -inf row, and no ranked row.
            kept = rows > 0
            highest = np.max(scores, axis=1, where=np.isfinite(scores), initial=-np.inf)
            lowest = np.min(ranked, axis=1, where=kept, initial=np.inf)
            moved = (np.isfinite(highest) & np.isfinite(lowest))[:, None]
            scores = np.where(moved, scores - highest[:, None] + (lowest - 1.0)[:, None], scores)
            users_axis = np.broadcast_to(np.arange(rows.shape[0])[:, None], rows.shape)
            scores[users_axis[kept], rows[kept]] = ranked[kept]
        return scores[:, 1:]

    def _request(
        self,
        user_ids: Sequence[Hashable] | np.ndarray,
        histories: Sequence[Sequence[Hashable] | np.ndarray] | None,
        ratings: Sequence[Sequence[float | int] | np.ndarray] | None,
        exclude_seen: bool,
        use_ranker: bool | None,
    ) -> "_Request":
        """The checked arguments of `recommend` and `score_items`, as the models read them."""
        use_ranker = self._resolve_use_ranker(use_ranker)
        exclude_seen = _flag(exclude_seen, "exclude_seen")
        users = as_ids(user_ids, "user_ids")
        if not users:
            raise ValueError("user_ids: expected at least one user, got none")
        sequences, actions = self._sequences(users, histories, ratings)
        return _Request(
            user_hashes=self.features.user_rows(users),
            sequences=sequences,
            windows=windows(sequences, self.options.history_seq_len),
            action_windows=windows(actions, self.options.history_seq_len),
            exclude_seen=exclude_seen,
            use_ranker=use_ranker,
        )

    def _served_prior(self, request: "_Request") -> CooccurrencePrior | None:
        """The co-occurrence prior where the request is served by the stage it was chosen
        for: the ranker when one was trained, else retrieval."""
        if request.use_ranker == ("ranker" in self.validation):
            return self.cooccurrence
        return None

    def _rank(self, request: "_Request", k: int) -> tuple[np.ndarray, np.ndarray]:
        """The two stages' (or retrieval's alone) top `k` item rows and scores per user."""
        no_items = [np.zeros(0, np.int32)] * len(request.sequences)
        return rank_in_chunks(
            self.retriever,
            self.ranker if request.use_ranker else None,
            self._item_vectors,
            self._item_hashes,
            request.user_hashes,
            request.windows,
            request.action_windows,
            excluded(request.sequences if request.exclude_seen else no_items),
            self.options,
            k,
            self._served_prior(request),
        )

    def _resolve_use_ranker(self, use_ranker: bool | None) -> bool:
        if use_ranker is None:
            return self.use_ranker
        use_ranker = _flag(use_ranker, "use_ranker")
        if use_ranker and "ranker" not in self.validation:
            raise ValueError("use_ranker: expected False or None, the ranker was not trained")
        return use_ranker

    def _sequences(
        self,
        users: list,
        histories: Sequence[Sequence[Hashable] | np.ndarray] | None,
        ratings: Sequence[Sequence[float | int] | np.ndarray] | None,
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Each user's item rows in time order and their action masks: from `histories`
        (unknown items dropped, with one warning) and `ratings` (None: engaged), or, with None,
        from fit's log."""
        if histories is None:
            if ratings is not None:
                raise ValueError(
                    "ratings: expected None without histories (users known from fit bring "
                    "their logged actions), got ratings"
                )
            unknown = [user for user in users if user not in self.histories]
            if unknown:
                raise ValueError(
                    f"user_ids: without histories every user must be known from fit, "
                    f"got {len(unknown)} unknown (first {unknown[0]!r})"
                )
            return (
                [self.histories[user] for user in users],
                [self.history_actions[user] for user in users],
            )
        if isinstance(histories, str | bytes) or len(histories) != len(users):
            raise ValueError(
                f"histories: expected {len(users)} sequences (one per user), "
                f"got {len(histories) if hasattr(histories, '__len__') else histories!r}"
            )
        if ratings is not None and (isinstance(ratings, str | bytes) or len(ratings) != len(users)):
            raise ValueError(
                f"ratings: expected {len(users)} sequences (one per history), "
                f"got {len(ratings) if hasattr(ratings, '__len__') else ratings!r}"
            )
        sequences, actions, dropped = [], [], 0
        for index, history in enumerate(histories):
            history = as_ids(history, f"histories[{index}]")
            if not history:
                raise ValueError(f"histories[{index}]: expected at least one item, got none")
            if ratings is None:
                masks = engaged_masks(len(history))
            else:
                name, like = f"ratings[{index}]", f"histories[{index}]"
                given = as_numbers(ratings[index], name, len(history), like)
                masks = action_masks(rating_actions(given))
            known = [position for position, item in enumerate(history) if item in self._item_rows]
            dropped += len(history) - len(known)
            sequences.append(np.array([self._item_rows[history[i]] for i in known], np.int32))
            actions.append(masks[known])
        if dropped:
            warnings.warn(
                f"histories: dropped {dropped} item ids unknown to the model", stacklevel=3
            )
        return sequences, actions

    def save(self, directory: str | os.PathLike) -> None:
        """Write the models, options, ids, histories and the side features' hashes into
        `directory`, created if needed (`persistence` says how)."""
        persistence.save(
            persistence.Saved(
                retriever=self.retriever,
                ranker=self.ranker,
                options=self.options,
                item_ids=self.item_ids,
                histories=self.histories,
                history_actions=self.history_actions,
                use_ranker=self.use_ranker,
                validation=self.validation,
                validation_history=self.validation_history,
                features=self.features,
                cooccurrence_weight=self.cooccurrence_weight,
            ),
            directory,
        )

    @classmethod
    def load(cls, directory: str | os.PathLike, *, verify: bool = True) -> "Recommender":
        """A `Recommender` written by `save`; recommends exactly as the saved one did.

        Every file is checked against the save's manifest first: a damaged or inconsistent
        one is a ValueError naming it. `verify=False` skips only comparing the files' SHA-256
        (a flipped byte inside a file then goes unnoticed), and reads format-2 saves, which
        predate checksums (`persistence` says more).
        """
        saved = persistence.load(directory, verify=_flag(verify, "verify"))
        return cls(
            saved.retriever,
            saved.ranker,
            saved.options,
            saved.item_ids,
            saved.histories,
            use_ranker=saved.use_ranker,
            validation=saved.validation,
            validation_history=saved.validation_history,
            features=saved.features,
            history_actions=saved.history_actions,
            cooccurrence_weight=saved.cooccurrence_weight,
        )


@dataclasses.dataclass(frozen=True)
class _Request:
    """Users to serve: their hashes, item-row sequences, their windows and the windows' action
    masks, and how to serve them."""

    user_hashes: np.ndarray
    sequences: list[np.ndarray]
    windows: np.ndarray
    action_windows: np.ndarray
    exclude_seen: bool
    use_ranker: bool


def _flag(value, name: str) -> bool:
    """A boolean argument: True or False (NumPy's too), never a truthy string or number."""
    if not isinstance(value, bool | np.bool_):
        raise ValueError(f"{name}: expected True or False, got {value!r}")
    return bool(value)
