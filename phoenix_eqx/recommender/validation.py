"""The held-out items `fit` validates on: each user's last interaction, ranked by the two
stages as `recommend` serves them. They alone pick each stage's best epoch and whether the
ranker is served."""

import dataclasses
import weakref

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Int
from rich.console import Console

from ..data.feature_hashes import FeatureHashes
from ..training.metrics import paired_difference, ranked_list_per_user
from ..training.models import TrainableRanker, TrainableRetriever
from .batches import excluded, windows
from .cooccurrence import CooccurrencePrior, prior_scores
from .index import IndexedLog
from .models import item_vectors
from .options import FitOptions
from .two_stage import rank_in_chunks


@dataclasses.dataclass(frozen=True)
class Validation:
    """Each validation user's hashes, training sequence (its window of items and their action
    masks) and held-out last item, and the hashes of every item row."""

    users: np.ndarray
    histories: np.ndarray
    history_actions: np.ndarray
    excluded: np.ndarray
    targets: np.ndarray
    item_hashes: Int[Array, "rows item_hashes"]
    # Retrieval's searches of these users, by retriever (`id`, with a weak reference that
    # says it is still that retriever): choosing the prior's weight for the epoch retrieval
    # kept reuses the search its validation made.
    _searches: dict = dataclasses.field(default_factory=dict, init=False, repr=False, compare=False)

    def metrics(
        self,
        retriever: TrainableRetriever,
        ranker: TrainableRanker | None,
        options: FitOptions,
        k: int = 10,
        prior: CooccurrencePrior | None = None,
    ) -> dict[str, float]:
        """HR@k and NDCG@k of the held-out items (history excluded), with or without ranker
        (and the co-occurrence `prior` of the stage served)."""
        return means(self.per_user(retriever, ranker, options, k, prior))

    def ranker_gain(
        self,
        retriever: TrainableRetriever,
        ranker: TrainableRanker,
        options: FitOptions,
        k: int = 10,
        prior: CooccurrencePrior | None = None,
    ) -> dict[str, float]:
        """How much the ranker lifts HR@k and NDCG@k over retrieval alone on these users:
        the paired differences and their standard errors (`paired_difference`, "hr@k_se"),
        and the ceiling of any re-ranking, "retrieval_recall@n": the share of held-out items
        among the `n` (`num_retrieved`) that retrieval hands the ranker."""
        with_ranker = self.per_user(retriever, ranker, options, k, prior)
        return self.gain_over_retrieval(retriever, with_ranker, options, k)

    def gain_over_retrieval(
        self,
        retriever: TrainableRetriever,
        with_ranker: dict[str, np.ndarray],
        options: FitOptions,
        k: int = 10,
    ) -> dict[str, float]:
        """`ranker_gain` of per-user results already computed (`per_user` of both stages)."""
        retrieved = self._depth(options, k)
        found, _ = self.ranked(retriever, None, options, retrieved)
        alone = ranked_list_per_user(found[:, :k], self.targets, k)
        recall = ranked_list_per_user(found, self.targets, retrieved)[f"hr@{retrieved}"]
        gain = {f"retrieval_recall@{retrieved}": float(recall.mean())}
        for name in with_ranker:
            paired = paired_difference(with_ranker[name], alone[name])
            gain[name] = paired["difference"]
            gain[f"{name}_se"] = paired["standard_error"]
        return gain

    def per_user(
        self,
        retriever: TrainableRetriever,
        ranker: TrainableRanker | None,
        options: FitOptions,
        k: int,
        prior: CooccurrencePrior | None = None,
    ) -> dict[str, np.ndarray]:
        """Each held-out user's HR@k and NDCG@k, as `recommend` serves with or without ranker."""
        found, _ = self.ranked(retriever, ranker, options, k, prior)
        return ranked_list_per_user(found, self.targets, k)

    def ranked(
        self,
        retriever: TrainableRetriever,
        ranker: TrainableRanker | None,
        options: FitOptions,
        k: int,
        prior: CooccurrencePrior | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """`[users, k]`: each held-out user's top `k` item rows as `recommend` serves them, and
        their served scores. Retrieval alone is kept (`_searches`) for `prior_weight_metrics`,
        which serves retrieval with the prior's suggestions beside the same search."""
        searched = self._search_of(retriever) if ranker is None and prior is not None else None
        found = rank_in_chunks(
            retriever,
            ranker,
            item_vectors(retriever, self.item_hashes),
            self.item_hashes,
            self.users,
            self.histories,
            self.history_actions,
            self.excluded,
            options,
            k,
            prior,
            searched,
        )
        if ranker is None and prior is None:
            self._keep_search(retriever, found)
        return found

    def prior_choice_reuses_search(
        self, retriever: TrainableRetriever, options: FitOptions, k: int = 10
    ) -> bool:
        """Whether `prior_weight_metrics` of `retriever` alone serves beside the search its
        last validation kept, searching nothing itself: then it costs a fraction of a
        validation pass (`Recommender.fit` budgets for it so)."""
        kept = self._search_of(retriever)
        return kept is not None and kept[0].shape[1] >= self._depth(options, k)

    def _depth(self, options: FitOptions, k: int) -> int:
        """How deep retrieval searches to serve the top `k`: `num_retrieved`, at least `k`."""
        return min(max(options.num_retrieved, k), self.item_hashes.shape[0] - 1)

    def _search_of(self, retriever: TrainableRetriever) -> tuple[np.ndarray, np.ndarray] | None:
        kept = self._searches.get(id(retriever))
        return kept[1] if kept is not None and kept[0]() is retriever else None

    def _keep_search(
        self, retriever: TrainableRetriever, found: tuple[np.ndarray, np.ndarray]
    ) -> None:
        """Keep `found` for `retriever`, dropping the searches of retrievers gone since."""
        for key in [key for key, (ref, _) in self._searches.items() if ref() is None]:
            del self._searches[key]
        self._searches[id(retriever)] = (weakref.ref(retriever), found)

    def prior_weight_metrics(
        self,
        retriever: TrainableRetriever,
        ranker: TrainableRanker | None,
        prior: CooccurrencePrior,
        options: FitOptions,
        k: int = 10,
    ) -> list[dict[str, float]]:
        """HR@k and NDCG@k as served with `prior` at each of `options.cooccurrence_weights`,
        with the ranker or, with None, retrieval alone. The stages run once: the prior only
        re-orders the served candidates (with weight 0 they come out in the order without
        it), so each weight re-sorts them (a stable sort, where serving's `top_k` may order
        exact ties otherwise)."""
        depth = self._depth(options, k)
        if ranker is None:
            depth += prior.num_suggested
        rows, scores = self.ranked(retriever, ranker, options, depth, prior.with_weight(0.0))
        extra = prior_scores(prior, self.histories, rows)
        results = []
        for weight in options.cooccurrence_weights:
            served = scores + np.float32(weight) * extra
            order = np.argsort(-served, axis=1, kind="stable")[:, :k]
            found = np.take_along_axis(rows, order, axis=1)
            results.append(means(ranked_list_per_user(found, self.targets, k)))
        return results


def hold_out_last(
    log: IndexedLog, features: FeatureHashes, options: FitOptions
) -> tuple[list[np.ndarray], list[np.ndarray], Validation]:
    """Each user's training sequence and action masks and the `Validation` of the held-out
    last items: of every user with two or more items, or of `options.validation_users` of
    them drawn with `options.seed`; a user not held out trains on its whole sequence."""
    eligible = np.flatnonzero([sequence.size >= 2 for sequence in log.sequences])
    if not eligible.size:
        raise ValueError(
            "user_ids: expected some user with two or more interactions (the last one is "
            "held out for validation), got none"
        )
    held_out = eligible
    if options.validation_users is not None and eligible.size > options.validation_users:
        rng = np.random.default_rng(options.seed)
        held_out = np.sort(rng.choice(eligible, options.validation_users, replace=False))
    is_held_out = np.zeros(len(log.sequences), bool)
    is_held_out[held_out] = True
    train = [s[:-1] if out else s for s, out in zip(log.sequences, is_held_out, strict=True)]
    train_actions = [a[:-1] if out else a for a, out in zip(log.actions, is_held_out, strict=True)]
    validation = Validation(
        users=features.user_rows([log.user_ids[i] for i in held_out]),
        histories=windows([train[i] for i in held_out], options.history_seq_len),
        history_actions=windows([train_actions[i] for i in held_out], options.history_seq_len),
        excluded=excluded([train[i] for i in held_out]),
        targets=np.array([log.sequences[i][-1] for i in held_out]),
        item_hashes=jnp.asarray(features.item_hashes),
    )
    return train, train_actions, validation


def prior_applies(options: FitOptions, num_items: int) -> bool:
    """Whether fit chooses a co-occurrence prior's weight: some weight is positive and the
    catalogue is at most `options.cooccurrence_max_items` items."""
    return options.cooccurrence_weights != (0.0,) and num_items <= options.cooccurrence_max_items


def choose_prior(
    retriever: TrainableRetriever,
    ranker: TrainableRanker | None,
    prior: CooccurrencePrior,
    validation: Validation,
    options: FitOptions,
    console: Console,
) -> tuple[CooccurrencePrior | None, dict[str, float]]:
    """`prior` at the weight of `options.cooccurrence_weights` with the best validation HR@10
    (then NDCG@10, then the smaller weight), served with `ranker` or, with None, with
    retrieval alone (None where validation chose weight 0), and its validation metrics."""
    tried = validation.prior_weight_metrics(retriever, ranker, prior, options)
    best = max(
        range(len(tried)),
        key=lambda i: (tried[i]["hr@10"], tried[i]["ndcg@10"], -options.cooccurrence_weights[i]),
    )
    weight = options.cooccurrence_weights[best]
    by_weight = zip(options.cooccurrence_weights, tried, strict=True)
    console.print(
        "co-occurrence prior: validation HR@10 by weight "
        + ", ".join(f"{w:g}: {m['hr@10']:.4f}" for w, m in by_weight)
        + f"; serving weight {weight:g}"
    )
    return (prior.with_weight(weight) if weight > 0 else None), tried[best]


def means(per_user: dict[str, np.ndarray]) -> dict[str, float]:
    """Each metric's mean over the users."""
    return {name: float(values.mean()) for name, values in per_user.items()}
