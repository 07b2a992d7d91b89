"""Command line: `phoenix-eqx demo` (or `python -m phoenix_eqx.cli demo`).

The demo ranks and retrieves on built-in example data at the seed's demo configuration, going
from feature ids through hash-embedding tables to scores, and prints what the seed's demo
printed: ranked candidates with per-action probability bars, retrieved posts with score bars.
"""

import argparse
import sys

import jax
import jax.numpy as jnp
from rich.console import Console
from rich.table import Table

from .config import ACTIONS, demo_ranker_config, demo_retrieval_config
from .embedding import HashEmbeddingTables
from .example_data import create_example_batch
from .inference import encode_candidates, rank, retrieve, set_corpus
from .ranker import PhoenixModel
from .retrieval import PhoenixRetrievalModel

SHOWN_ACTIONS = ("favorite_score", "reply_score", "repost_score", "click_score", "dwell_score")


def _bar(value: float, width: int = 20) -> str:
    filled = round(max(0.0, min(1.0, value)) * width)
    return "█" * filled + "·" * (width - filled)


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
    corpus_batch, _ = create_example_batch(
        1, retrieval_config.emb_size, 0, corpus_size, key=corpus_key, table_size=table_rows
    )
    corpus_vectors, _ = encode_candidates(retrieval, corpus_batch, tables(corpus_batch))
    corpus = set_corpus(corpus_vectors[0], post_ids=corpus_batch.candidate_post_hashes[0, :, 0])
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="phoenix-eqx", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="rank and retrieve on built-in example data")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--batch-size", type=int, default=2)
    demo.add_argument("--corpus-size", type=int, default=5_000)
    demo.add_argument("--top-k", type=int, default=10)
    # `train` forwards everything after it to `python -m phoenix_eqx.train`.
    commands.add_parser("train", help="train and evaluate on MovieLens-100K", add_help=False)
    args, rest = parser.parse_known_args(argv)
    if args.command == "train":
        from .train import main as train_main

        train_main(rest)
        return
    args = parser.parse_args(argv)
    if args.command == "demo":
        run_demo(
            seed=args.seed,
            batch_size=args.batch_size,
            corpus_size=args.corpus_size,
            top_k=args.top_k,
            console=Console(),
        )


if __name__ == "__main__":
    main(sys.argv[1:])
