"""Command line: `phoenix-eqx demo` (or `python -m phoenix_eqx.cli demo`).

The demo fits a small `Recommender` on MovieLens-100K (fetched on first use and cached; on
synthetic data when it cannot be fetched) within a time budget, then shows, for a few users,
their latest movies and their top 10 after retrieval and after ranking, and the quick model's
held-out HR@10 beside popularity's. `demo --seed-tour` instead runs the seed's demo: random
weights at the seed's demo configuration, from feature ids through hash-embedding tables to
ranked candidates with per-action probability bars and retrieved posts with score bars.
"""

import argparse
import math
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .config import ACTIONS, demo_ranker_config, demo_retrieval_config
from .data import InteractionData, load_movielens_100k, movie_catalog, synthetic_interactions
from .embedding import HashEmbeddingTables
from .example_data import create_example_batch
from .inference import encode_items, rank, retrieve, set_corpus
from .ranker import PhoenixModel
from .recommender import FitOptions, Recommender
from .recommender.options import MAX_SEED
from .retrieval import PhoenixRetrievalModel
from .training import full_ranking_metrics, popularity_scores

SHOWN_ACTIONS = ("favorite_score", "reply_score", "repost_score", "click_score", "dwell_score")


def _bar(value: float, width: int = 20) -> str:
    filled = round(max(0.0, min(1.0, value)) * width)
    return "█" * filled + "·" * (width - filled)


def _held_out_split(users: np.ndarray, items: np.ndarray, timestamps: np.ndarray):
    """Each user's items in time order (ties in input order), split as `Recommender.fit` splits
    them: the last one held out for validation, for users with two or more."""
    order = np.lexsort((np.arange(users.size), timestamps, users))
    sequences = np.split(items[order], np.flatnonzero(np.diff(users[order])) + 1)
    return [s for s in sequences if s.size >= 2]


def popularity_hit_rate(users, items, timestamps, num_items: int, k: int = 10) -> float:
    """Popularity's HR@k (seen items excluded) on the held-out items `Recommender.fit` uses."""
    sequences = _held_out_split(users, items, timestamps)
    seen = np.zeros((len(sequences), num_items + 1), bool)
    for row, sequence in enumerate(sequences):
        seen[row, sequence[:-1]] = True
    targets = np.array([sequence[-1] for sequence in sequences])
    scores = popularity_scores(seen, np.arange(len(sequences)))
    ranked = np.arange(num_items + 1) > 0
    metrics = full_ranking_metrics(scores, targets, seen, (k,), ranked_items=ranked)
    return metrics["seen_excluded"][f"hit_rate@{k}"]


def demo_data(console: Console, seed: int) -> tuple[InteractionData, Callable[[int], str]]:
    """MovieLens-100K and its movie titles, or synthetic data (and plain item names) when it
    cannot be fetched, saying so."""
    try:
        catalog = movie_catalog("ml-100k")
        return load_movielens_100k(), catalog.describe
    except (OSError, RuntimeError) as error:
        console.print(
            escape(
                f"MovieLens-100K could not be fetched ({type(error).__name__}: "
                f"{str(error).splitlines()[0][:120]}); using built-in synthetic data instead"
            )
        )
        return synthetic_interactions(num_users=300, num_items=200, seed=seed), "item {}".format


def run_movielens_demo(
    *, seed: int, budget_s: float, num_users: int, console: Console
) -> Recommender:
    """Fit a quick `Recommender` on MovieLens-100K (synthetic data if it cannot be fetched) and
    show what it recommends."""
    console.rule("[bold]Phoenix on MovieLens-100K[/bold]")
    data, describe = demo_data(console, seed)
    num_items = data.post_hashes.shape[0] - 1
    options = FitOptions(
        emb_size=32,
        key_size=16,
        history_seq_len=50,
        patience=8,  # validation on 943 users is noisy; the loss still falls for many epochs
        ranker_epochs=10,  # the budget ends the ranker: it uses what retrieval leaves
        time_budget_s=budget_s,
        seed=seed,
    )
    start = time.perf_counter()
    recommender = Recommender.fit(
        data.users, data.items, data.timestamps, data.ratings, options=options
    )
    fit_seconds = time.perf_counter() - start
    popularity = popularity_hit_rate(data.users, data.items, data.timestamps, num_items)
    shown = np.unique(data.users)[:num_users]
    ranker_trained = "ranker" in recommender.validation
    if not ranker_trained:
        console.print("the budget left no time for the ranker: retrieval's picks alone")
    for user in shown.tolist():
        history = recommender.histories[user]
        latest = ", ".join(describe(int(item)) for item in history[-5:][::-1])
        console.print(escape(f"user {user}: latest movies (newest first): {latest}"))
        table = Table(title=f"user {user}: top 10", title_justify="left")
        table.add_column("rank", justify="right")
        columns = []
        retrieved = recommender.recommend([user], k=10, use_ranker=False)
        table.add_column("after retrieval (score: cosine)")
        columns.append((retrieved, "{:+.3f}"))
        if ranker_trained:
            score = (
                "retrieval logit + ranker's correction"
                if recommender.options.residual_ranker
                else "weighted actions"
            )
            if recommender.cooccurrence_weight > 0:
                score += f" + {recommender.cooccurrence_weight:g} x co-occurrence prior"
            table.add_column(f"after ranking (score: {score})")
            columns.append((recommender.recommend([user], k=10, use_ranker=True), "{:.3f}"))
        for position in range(10):
            cells = [
                f"{describe(int(items[0, position]))}  {score_format.format(scores[0, position])}"
                for (items, scores), score_format in columns
            ]
            table.add_row(str(position + 1), *(escape(cell) for cell in cells))
        console.print(table)
    summary = Table(title="held-out last item per user, seen items excluded", title_justify="left")
    summary.add_column("model")
    summary.add_column("HR@10", justify="right")
    validation = recommender.validation
    summary.add_row("popularity", f"{popularity:.3f}")
    summary.add_row("Phoenix retrieval", f"{validation['retrieval']['hr@10']:.3f}")
    if "ranker" in validation:
        # As served: with the co-occurrence prior at the weight validation chose.
        served = validation.get("cooccurrence", validation["ranker"])
        summary.add_row("Phoenix retrieval + ranker", f"{served['hr@10']:.3f}")
    console.print(summary)
    if "ranker_gain" in validation:
        gain = validation["ranker_gain"]
        console.print(
            f"the ranker's HR@10 gain over retrieval alone, paired over the same users: "
            f"{gain['hr@10']:+.3f} ± {gain['hr@10_se']:.3f} (one standard error)"
        )
    console.print(
        f"fit took {fit_seconds:.0f} s (budget {budget_s:.0f} s) on "
        f"{jax.devices()[0].device_kind}; these HR@10 figures are the validation items that "
        f"chose the epochs, so they are optimistic: see docs/training.md for measured results"
    )
    return recommender


def run_demo(*, seed: int, batch_size: int, corpus_size: int, top_k: int, console: Console) -> None:
    key = jax.random.key(seed)
    tables_key, ranker_key, retrieval_key, batch_key, corpus_key = jax.random.split(key, 5)
    ranker_config = demo_ranker_config(fprop_dtype=jnp.float32)
    retrieval_config = demo_retrieval_config(fprop_dtype=jnp.float32)
    table_rows = 10_000
    tables = HashEmbeddingTables(
        table_rows, table_rows, table_rows, ranker_config.emb_size, key=tables_key
    )
    ranker = PhoenixModel(ranker_config, key=ranker_key)
    retrieval = PhoenixRetrievalModel(retrieval_config, key=retrieval_key)
    batch, _ = create_example_batch(
        batch_size,
        ranker_config.emb_size,
        ranker_config.history_seq_len,
        ranker_config.candidate_seq_len,
        key=batch_key,
        table_size=table_rows,
    )
    embeddings = tables(batch)

    console.rule("[bold]Ranking[/bold] (seed demo config, random weights)")
    ranking = rank(ranker, batch, embeddings)
    for user in range(batch_size):
        table = Table(
            title=f"user {user}: candidates by favorite probability", title_justify="left"
        )
        table.add_column("rank", justify="right")
        table.add_column("slot", justify="right")
        table.add_column("post", justify="right")
        for name in SHOWN_ACTIONS:
            table.add_column(name.removesuffix("_score"))
        for position, slot in enumerate(ranking.ranked_indices[user].tolist()):
            if not bool(ranking.candidate_valid[user, slot]):
                continue
            row = [
                str(position + 1),
                str(slot),
                str(int(batch.candidate_post_hashes[user, slot, 0])),
            ]
            for name in SHOWN_ACTIONS:
                p = float(ranking.probabilities[user, slot, ACTIONS.index(name)])
                row.append(f"{_bar(p, 6)} {p:.2f}")
            table.add_row(*row)
        console.print(table)

    console.rule("[bold]Retrieval[/bold]")
    # Corpus: the candidate tower's vectors for random posts and authors from the same tables.
    hash_config = retrieval_config.hash_config
    post_key, author_key = jax.random.split(corpus_key)
    post_hashes = jax.random.randint(
        post_key, (corpus_size, hash_config.num_item_hashes), 1, table_rows
    )
    author_hashes = jax.random.randint(
        author_key, (corpus_size, hash_config.num_author_hashes), 1, table_rows
    )
    corpus_vectors = encode_items(retrieval, *tables.item_embeddings(post_hashes, author_hashes))
    corpus = set_corpus(corpus_vectors, post_ids=post_hashes[:, 0])
    results = retrieve(retrieval, batch, embeddings, corpus, top_k)
    post_ids = corpus.lookup_post_ids(results.top_k_indices)
    for user in range(batch_size):
        table = Table(
            title=f"user {user}: top {top_k} of {corpus_size} posts", title_justify="left"
        )
        table.add_column("rank", justify="right")
        table.add_column("post", justify="right")
        table.add_column("score (cosine)")
        for position in range(top_k):
            score = float(results.top_k_scores[user, position])
            bar = _bar((score + 1.0) / 2.0)
            table.add_row(
                str(position + 1), str(int(post_ids[user, position])), f"{bar} {score:+.3f}"
            )
        console.print(table)


def _check_demo_flags(demo: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Every demo flag's range, checked before anything runs: a bad one would otherwise fail
    halfway through, after minutes of fitting or half the tour printed, with a traceback.
    Each error names its flag (argparse's exit status 2)."""
    for flag, value in (
        ("--users", args.users),
        ("--batch-size", args.batch_size),
        ("--corpus-size", args.corpus_size),
    ):
        if value < 1:
            demo.error(f"{flag}: expected an int >= 1, got {value}")
    if not 1 <= args.top_k <= args.corpus_size:
        demo.error(
            f"--top-k: expected an int in 1..{args.corpus_size} (--corpus-size), got {args.top_k}"
        )
    if not 0 <= args.seed <= MAX_SEED:
        demo.error(f"--seed: expected an int in 0..{MAX_SEED}, got {args.seed}")
    if not (math.isfinite(args.budget) and args.budget > 0):
        demo.error(f"--budget: expected a positive finite number of seconds, got {args.budget}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="phoenix-eqx", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="fit a quick Recommender on MovieLens-100K and show its recommendations"
    )
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--budget", type=float, default=100.0, help="fit time budget, seconds")
    demo.add_argument("--users", type=int, default=3, help="users to show")
    demo.add_argument(
        "--seed-tour", action="store_true", help="the seed's random-weights demo instead"
    )
    demo.add_argument("--batch-size", type=int, default=2, help="--seed-tour: users")
    demo.add_argument("--corpus-size", type=int, default=5_000, help="--seed-tour: corpus")
    demo.add_argument("--top-k", type=int, default=10, help="--seed-tour: retrieved posts")
    # `train` forwards everything after it to `python -m phoenix_eqx.train`.
    commands.add_parser(
        "train",
        help="train and evaluate on MovieLens (python -m phoenix_eqx.train)",
        add_help=False,
    )
    args, rest = parser.parse_known_args(argv)
    if args.command == "train":
        from .train import main as train_main

        train_main(rest)
        return
    args = parser.parse_args(argv)
    _check_demo_flags(demo, args)
    if args.seed_tour:
        run_demo(
            seed=args.seed,
            batch_size=args.batch_size,
            corpus_size=args.corpus_size,
            top_k=args.top_k,
            console=Console(),
        )
    else:
        run_movielens_demo(
            seed=args.seed, budget_s=args.budget, num_users=args.users, console=Console()
        )


if __name__ == "__main__":
    main(sys.argv[1:])
