"""Validation HR@10 / NDCG@10 of the ranker stage alone, trained again on a saved retriever:
choose the ranker's options without paying for retrieval's training each time. Same
protocol and validation items as `benchmarks.recommender_validation`, whose `--save` makes
the saved model (fit with `ranker_epochs=0`); test is never read. From the repository root:

    python -m benchmarks.recommender_validation 1m ranker_epochs=0 --save ml1m_retriever
    python -m benchmarks.ranker_validation 1m ml1m_retriever --budget 540 \\
        ranker_positions_per_user=4

The ranker starts as `fit` starts it (warm from the retriever, the saved model's initial
ranker otherwise) and is trained by `fit`'s own stage (`ranker_stage.train_ranker`) until
its epochs, patience or `--budget` end it. Extra arguments `field=value` override the
options of the ranker stage, of serving and of optimisation (values are JSON).
"""

import argparse
import dataclasses
import json
import time

import numpy as np
from rich.console import Console

import phoenix_eqx as px
from phoenix_eqx.recommender.index import index_log
from phoenix_eqx.recommender.ranker_stage import train_ranker
from phoenix_eqx.recommender.validation import hold_out_last
from phoenix_eqx.training.loop import Run
from phoenix_eqx.training.models import warm_start_ranker

from .recommender_validation import load, without_test_items

# Options a saved retriever does not fix.
OVERRIDABLE = {
    field.name
    for group in (px.RankerStageOptions, px.ServingOptions, px.OptimizationOptions)
    for field in dataclasses.fields(group)
} | {"verbose"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", choices=["1m", "100k"])
    parser.add_argument("saved", help="a Recommender saved by recommender_validation --save")
    parser.add_argument("--budget", type=float, default=None, help="the ranker's seconds")
    parser.add_argument(
        "--weight-scales",
        default="",
        help="comma-separated factors: validate the trained ranker again with its action "
        "weights scaled by each (how strongly its correction is served)",
    )
    parser.add_argument("overrides", nargs="*", metavar="field=value")
    args = parser.parse_intermixed_args()
    overrides = {}
    for item in args.overrides:
        name, _, value = item.partition("=")
        if name not in OVERRIDABLE:
            parser.error(f"{name}: expected one of {sorted(OVERRIDABLE)} (the model is saved)")
        overrides[name] = json.loads(value)
    if "action_weights" in overrides:
        overrides["action_weights"] = tuple(map(tuple, overrides["action_weights"]))
    saved = px.Recommender.load(args.saved)
    # The saved model was fit without a ranker: its ranker options start from the defaults.
    ranker_defaults = {
        field.name: getattr(px.FitOptions(), field.name)
        for field in dataclasses.fields(px.RankerStageOptions)
    }
    options = dataclasses.replace(
        saved.options, **(ranker_defaults | overrides), time_budget_s=args.budget
    )
    data = load(args.dataset)
    rows = without_test_items(data)
    log = index_log(data.users[rows], data.items[rows], data.timestamps[rows], data.ratings[rows])
    if log.item_ids != saved.item_ids:
        parser.error(f"saved: expected a model fit on {args.dataset} by recommender_validation")
    train, train_actions, validation = hold_out_last(log, saved.features, options)
    print(json.dumps({"overrides": overrides, "retrieval": saved.validation["retrieval"]}))
    ranker = saved.ranker
    if options.ranker_warm_start:
        ranker = warm_start_ranker(ranker, saved.retriever)
    start = time.perf_counter()
    budget = np.inf if args.budget is None else args.budget
    # No earlier stage: nothing to judge the ranker's startup by, so it always trains.
    run = Run(
        Console(), options.verbose, start, [], None, first_step_s=[0.0], first_validation_s=[0.0]
    )
    trained = train_ranker(
        ranker,
        saved.retriever,
        train,
        train_actions,
        log.user_ids,
        saved.features,
        validation,
        options,
        run,
        start + budget,
    )
    ranker, metrics = trained
    gain = validation.ranker_gain(saved.retriever, ranker, options)
    by_scale = {}
    for scale in filter(None, args.weight_scales.split(",")):
        weights = tuple((name, float(scale) * weight) for name, weight in options.action_weights)
        scaled = dataclasses.replace(options, action_weights=weights)
        by_scale[scale] = validation.ranker_gain(saved.retriever, ranker, scaled)
    print(
        json.dumps(
            {
                "dataset": args.dataset,
                "overrides": overrides,
                "wall_s": round(time.perf_counter() - start, 1),
                "retrieval": saved.validation["retrieval"],
                "ranker": metrics,
                "ranker_gain": gain,
                "ranker_gain_by_weight_scale": by_scale,
                "history": run.history,
            }
        )
    )


if __name__ == "__main__":
    main()
