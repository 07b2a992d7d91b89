"""What `Recommender` costs as the log grows: time from raw ids to the first training step,
peak memory, retrieval's training throughput, validation's share of a fit, `recommend`'s
latency and throughput, the saved model's size, and validation HR@10 against popularity and
recent item-kNN on the fit's own split (the same held-out users: the difference is paired,
with its standard error), and the share of held-out items that follow the user's last item
somewhere in training ("successor seen": what counts of the planted walk can find).

    python -m benchmarks.scaling --sizes 10000:1000000,100000:1000000 --json out.json

Each size `ITEMS:INTERACTIONS` runs in a fresh subprocess, so that its peak resident memory
(`ru_maxrss`) and its compilations are its own. The log is `data.synthetic.planted_walks`
(users walking a planted item order). The fit is short on purpose (by default `epochs=1`
under `--budget` seconds, the user report's model: `emb_size=16, num_layers=1,
history_seq_len=8`; `--epochs`, `--history-seq-len` and `--num-retrieved` change those):
these are costs, not a tuned model.

How each figure is taken (the fit is instrumented, not changed):
- first step: seconds from calling `Recommender.fit` on the raw id arrays until its first
  training step has returned (indexing, features, validation set, models, the step's
  compilation); `prep` is the part before the retrieval stage starts.
- targets/s: targets trained per second of the epoch loop at steady state, i.e. between
  consecutive step calls (next batch's assembly included), leaving out the interval after
  each batch shape's first step (its compilation).
- peak RSS: the process's `ru_maxrss` right after fit (generation and fit), and at the end
  (the baselines' co-occurrence matrices included).
- validation: seconds in `Validation.metrics` (the held-out last items, ranked as
  `recommend` serves them), and its share of the fit's wall time; prior build: seconds
  building the co-occurrence prior's neighbour tables (fit builds two: from the training
  sequences after retrieval trains, and from the whole log for serving); prior: seconds
  choosing its weight (one pass over the held-out items, re-sorted per weight). The fit
  serves retrieval with the prior (pairs within two positions, the weight validation
  picks); HR@10 "fit" is what it serves, "retrieval" the model alone.
- recommend: one known user per call (seen items excluded), `--calls` calls after three of
  warm-up, p50 / p99; then 1,000 users in one call after one warm-up call, users/s.
"""

import argparse
import collections
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BATCH_USERS = 1000


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """`"10000:1000000,100000:1000000"` as `[(items, interactions), ...]`."""
    sizes = []
    for part in text.split(","):
        items, _, interactions = part.partition(":")
        sizes.append((int(items), int(interactions)))
    return sizes


def baseline_hits(
    train: list[np.ndarray],
    held_out: np.ndarray,
    targets: np.ndarray,
    num_items: int,
    k: int = 10,
    window: int = 2,
    recent: int = 3,
) -> dict[str, np.ndarray]:
    """Per held-out user (`train[held_out[j]]` its history, `targets[j]` its held-out item),
    whether popularity and recent item-kNN put the target in their top `k`, the history
    excluded from the ranking, as `fit` validates; both counted on `train`.

    Popularity ranks items by training count. Recent item-kNN scores an item by its
    co-occurrence counts (within `window` positions in training sequences) with the user's
    last `recent` items, weighted 1, 1/2, 1/3...; items with no co-occurrence follow by
    popularity. Sparse (scipy), so that it runs at a million items.
    """
    from scipy import sparse

    flat = np.concatenate(train)
    counts = np.bincount(flat, minlength=num_items + 1).astype(np.float64)
    counts[0] = -1.0
    popular = np.argsort(-counts, kind="stable")
    pairs = []
    for offset in range(1, window + 1):
        for sequence in train:
            if sequence.size > offset:
                pairs.append(np.stack([sequence[:-offset], sequence[offset:]]))
    edges = np.concatenate(pairs, axis=1)
    rows, cols = np.concatenate([edges[0], edges[1]]), np.concatenate([edges[1], edges[0]])
    shape = (num_items + 1, num_items + 1)
    cooccurrence = sparse.csr_matrix((np.ones(rows.size), (rows, cols)), shape=shape)
    hits = {"popularity": np.zeros(held_out.size), "recent item-kNN": np.zeros(held_out.size)}
    for position, (user, target) in enumerate(zip(held_out, targets, strict=True)):
        history = train[user]
        seen = set(history.tolist())
        top_popular = [item for item in popular[: k + len(seen)] if item not in seen][:k]
        hits["popularity"][position] = target in top_popular
        scores: dict[int, float] = collections.defaultdict(float)
        for age, item in enumerate(history[::-1][:recent]):
            row = cooccurrence.getrow(item)
            for neighbour, count in zip(row.indices, row.data, strict=True):
                scores[int(neighbour)] += count / (age + 1)
        ranked = sorted(
            (item for item in scores if item not in seen), key=lambda i: (-scores[i], i)
        )[:k]
        ranked += [item for item in top_popular if item not in scores][: k - len(ranked)]
        hits["recent item-kNN"][position] = target in ranked
    return hits


def successor_seen(
    train: list[np.ndarray], held_out: np.ndarray, targets: np.ndarray, num_items: int
) -> np.ndarray:
    """Per held-out user, whether its target follows its last training item somewhere in the
    training sequences: on a planted walk (a random cycle), the share of targets that any
    method reading items alone could place first; the rest are jumps, or steps no training
    sequence shows."""
    flat = np.concatenate(train).astype(np.int64)
    owners = np.repeat(np.arange(len(train)), [sequence.size for sequence in train])
    consecutive = owners[:-1] == owners[1:]
    pairs = flat[:-1][consecutive] * (num_items + 1) + flat[1:][consecutive]
    last = np.array([train[user][-1] for user in held_out], np.int64)
    return np.isin(last * (num_items + 1) + targets, pairs)


class FitProbe:
    """Times inside `Recommender.fit` without changing it: wraps the retrieval stage's entry,
    the train step and `Validation.metrics`."""

    def __init__(self) -> None:
        self.stage_start: float | None = None
        self.first_step_done: float | None = None
        self.step_entries: list[tuple[float, tuple, int]] = []
        self.validation_s = 0.0
        self.prior_s = 0.0
        self.prior_build_s = 0.0
        self.served_prior = None

    def install(self) -> None:
        from phoenix_eqx.recommender import CooccurrencePrior, api, retrieval_stage, validation
        from phoenix_eqx.training import loop

        probe = self
        run_stage, train_step, metrics, choose_prior = (
            retrieval_stage.run_stage,
            loop._train_step,
            validation.Validation.metrics,
            api.choose_prior,
        )

        def timed_run_stage(*args, **kwargs):
            probe.stage_start = time.perf_counter()
            return run_stage(*args, **kwargs)

        def timed_train_step(*args, **kwargs):
            step = train_step(*args, **kwargs)

            def timed_step(model, opt_state, example):
                entered = time.perf_counter()
                out = step(model, opt_state, example)
                targets = int(out[2]["targets"])  # waits for the step, as the loop does
                if probe.first_step_done is None:
                    probe.first_step_done = time.perf_counter()
                shape = example.batch.history_post_hashes.shape
                probe.step_entries.append((entered, shape, targets))
                return out

            return timed_step

        def timed_metrics(self, *args, **kwargs):
            started = time.perf_counter()
            result = metrics(self, *args, **kwargs)
            probe.validation_s += time.perf_counter() - started
            return result

        def timed_choose_prior(*args, **kwargs):
            started = time.perf_counter()
            result = choose_prior(*args, **kwargs)
            probe.prior_s += time.perf_counter() - started
            probe.served_prior = result[0]
            return result

        build_prior = CooccurrencePrior.of

        def timed_build_prior(cls, *args, **kwargs):
            started = time.perf_counter()
            result = build_prior(*args, **kwargs)
            probe.prior_build_s += time.perf_counter() - started
            return result

        CooccurrencePrior.of = classmethod(timed_build_prior)
        retrieval_stage.run_stage = timed_run_stage
        api.choose_prior = timed_choose_prior
        loop._train_step = timed_train_step
        validation.Validation.metrics = timed_metrics

    def targets_per_s(self) -> float:
        """Steady-state targets/s: intervals between step entries, without each shape's
        first (compiling) step."""
        seen, targets, seconds = set(), 0, 0.0
        entries = self.step_entries
        for (entered, shape, count), (following, _, _) in zip(entries, entries[1:], strict=False):
            if shape in seen:
                targets += count
                seconds += following - entered
            seen.add(shape)
        return targets / seconds if seconds > 0 else math.nan


def measure(
    num_items: int,
    num_interactions: int,
    num_users: int,
    budget: float,
    calls: int,
    ranker_epochs: int,
    history_seq_len: int = 8,
    epochs: int = 1,
    num_retrieved: int = 10,
) -> dict:
    """Every figure of one size (run in its own process: see the module docstring)."""
    import jax

    from phoenix_eqx.data.feature_hashes import feature_hashes
    from phoenix_eqx.data.synthetic import planted_walks
    from phoenix_eqx.recommender import FitOptions, Recommender
    from phoenix_eqx.recommender.index import index_log
    from phoenix_eqx.recommender.validation import hold_out_last
    from phoenix_eqx.training.metrics import paired_difference

    result: dict = {"items": num_items, "interactions": num_interactions, "users": num_users}
    started = time.perf_counter()
    users, items, timestamps = planted_walks(num_users, num_items, num_interactions)
    result["generate_s"] = time.perf_counter() - started
    log(f"  generated {num_interactions:,} rows in {result['generate_s']:.1f}s")

    probe = FitProbe()
    probe.install()
    options = FitOptions(
        emb_size=16,
        num_layers=1,
        history_seq_len=history_seq_len,
        num_retrieved=num_retrieved,
        epochs=epochs,
        ranker_epochs=ranker_epochs,
        time_budget_s=budget,
        verbose=False,
        # The co-occurrence prior at every size, counting pairs within two positions (the
        # kNN baseline's window: whole-sequence pairs grow with the square of ~500 items per
        # user), its weight chosen on validation from a grid that reaches past the logits.
        cooccurrence_max_items=num_items,
        cooccurrence_window=2,
        cooccurrence_weights=(0.0, 1.0, 4.0, 16.0, 64.0, 256.0, 1024.0),
    )
    fit_start = time.perf_counter()
    recommender = Recommender.fit(users, items, timestamps, options=options)
    result["fit_s"] = time.perf_counter() - fit_start
    # Through generation and fit only: the baselines below build co-occurrence pairs of their
    # own, which would otherwise set the process's peak.
    result["fit_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["prep_s"] = probe.stage_start - fit_start
    result["first_step_s"] = probe.first_step_done - fit_start
    result["train_steps"] = len(probe.step_entries)
    result["targets_per_s"] = probe.targets_per_s()
    result["validation_s"] = probe.validation_s
    result["validation_share"] = probe.validation_s / result["fit_s"]
    result["prior_s"] = probe.prior_s
    result["prior_build_s"] = probe.prior_build_s
    result["loss"] = options.resolved_loss(num_items)
    served = recommender.validation.get("cooccurrence", recommender.validation["retrieval"])
    result["hr10_fit"] = served["hr@10"]
    result["hr10_retrieval"] = recommender.validation["retrieval"]["hr@10"]
    result["prior_weight"] = served.get("weight", 0.0)
    result["serving"] = "retrieval + ranker" if recommender.use_ranker else "retrieval alone"
    log(
        f"  fit {result['fit_s']:.1f}s (first step at {result['first_step_s']:.1f}s, "
        f"validation {result['validation_s']:.1f}s, prior build {result['prior_build_s']:.1f}s "
        f"and choice {result['prior_s']:.1f}s), "
        f"{result['targets_per_s']:,.0f} targets/s"
    )

    known = list(recommender.histories)
    rng = np.random.default_rng(1)
    one = rng.choice(len(known), size=calls + 3, replace=len(known) < calls + 3)
    latencies = []
    for position, user in enumerate(one):
        called = time.perf_counter()
        recommender.recommend([known[user]])
        if position >= 3:
            latencies.append(time.perf_counter() - called)
    result["recommend_p50_ms"] = 1e3 * float(np.quantile(latencies, 0.5))
    result["recommend_p99_ms"] = 1e3 * float(np.quantile(latencies, 0.99))
    batch = [known[user] for user in rng.choice(len(known), size=BATCH_USERS)]
    recommender.recommend(batch)
    called = time.perf_counter()
    recommender.recommend(batch)
    result["batch_users_per_s"] = BATCH_USERS / (time.perf_counter() - called)
    log(
        f"  recommend p50 {result['recommend_p50_ms']:.1f} ms, p99 "
        f"{result['recommend_p99_ms']:.1f} ms; {result['batch_users_per_s']:,.0f} users/s"
    )

    directory = Path(tempfile.mkdtemp(prefix="scaling-model-"))
    try:
        recommender.save(directory)
        result["model_mb"] = (
            sum(path.stat().st_size for path in directory.rglob("*") if path.is_file()) / 1e6
        )
    finally:
        shutil.rmtree(directory)

    # The baselines on the fit's own split (its training sequences, its held-out users):
    # the same targets, so that the served list's difference from each is paired.
    indexed = index_log(users, items, timestamps, None)
    train, _, validation = hold_out_last(
        indexed, feature_hashes(indexed.item_ids, indexed.user_ids), recommender.options
    )
    held_out = np.flatnonzero(
        [part.size < whole.size for part, whole in zip(train, indexed.sequences, strict=True)]
    )
    ranker = recommender.ranker if recommender.use_ranker else None
    served_hits = validation.per_user(
        recommender.retriever, ranker, recommender.options, 10, probe.served_prior
    )["hr@10"]
    result["successor_seen"] = float(
        successor_seen(train, held_out, validation.targets, num_items).mean()
    )
    for name, hits in baseline_hits(train, held_out, validation.targets, num_items).items():
        result[f"hr10_{name}"] = float(hits.mean())
        paired = paired_difference(served_hits, hits)
        result[f"vs_{name}"] = paired["difference"]
        result[f"vs_{name}_se"] = paired["standard_error"]
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["jax"] = jax.__version__
    log(
        f"  HR@10 fit {result['hr10_fit']:.4f}, popularity {result['hr10_popularity']:.4f}, "
        f"recent item-kNN {result['hr10_recent item-kNN']:.4f} (served - kNN "
        f"{result['vs_recent item-kNN']:+.4f} ± {result['vs_recent item-kNN_se']:.4f}, paired); "
        f"peak RSS "
        f"{result['fit_peak_rss_mb']:,.0f} MB through fit, {result['peak_rss_mb']:,.0f} MB in all, "
        f"model {result['model_mb']:.1f} MB"
    )
    return result


def log(message: str) -> None:
    """Progress on stderr, flushed: a size can take minutes."""
    print(message, file=sys.stderr, flush=True)


COLUMNS = (
    ("items", "{:,}"),
    ("interactions", "{:,}"),
    ("loss", "{}"),
    ("prep_s", "{:.1f}"),
    ("first_step_s", "{:.1f}"),
    ("fit_peak_rss_mb", "{:,.0f}"),
    ("peak_rss_mb", "{:,.0f}"),
    ("targets_per_s", "{:,.0f}"),
    ("validation_s", "{:.1f}"),
    ("prior_build_s", "{:.1f}"),
    ("prior_s", "{:.1f}"),
    ("fit_s", "{:.1f}"),
    ("recommend_p50_ms", "{:.1f}"),
    ("recommend_p99_ms", "{:.1f}"),
    ("batch_users_per_s", "{:,.0f}"),
    ("model_mb", "{:.1f}"),
    ("hr10_fit", "{:.4f}"),
    ("hr10_retrieval", "{:.4f}"),
    ("prior_weight", "{:g}"),
    ("hr10_popularity", "{:.4f}"),
    ("hr10_recent item-kNN", "{:.4f}"),
    ("vs_recent item-kNN", "{:+.4f}"),
    ("vs_recent item-kNN_se", "{:.4f}"),
    ("successor_seen", "{:.4f}"),
)


def table(results: list[dict]) -> str:
    """The results as a Markdown table, one row per size."""
    lines = [
        "| " + " | ".join(name for name, _ in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for result in results:
        lines.append("| " + " | ".join(form.format(result[name]) for name, form in COLUMNS) + " |")
    return "\n".join(lines)


PLOTTED = (
    ("first_step_s", "first step (s)"),
    ("fit_peak_rss_mb", "peak RSS through fit (MB)"),
    ("targets_per_s", "train targets/s"),
    ("validation_s", "validation (s)"),
    ("recommend_p50_ms", "recommend p50 (ms)"),
    ("batch_users_per_s", "batch users/s"),
    ("model_mb", "model (MB)"),
)


def plot(results: list[dict], path: str) -> dict[str, dict[str, float]]:
    """Log-log plots of every cost against items (sizes sharing the most common interaction
    count) and against interactions (sizes sharing the most common item count), with the
    least-squares exponent of each series; returns the exponents."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    exponents: dict[str, dict[str, float]] = {}
    figure, axes = plt.subplots(1, 2, figsize=(13, 5))
    for axis, (size, fixed) in zip(
        axes, (("items", "interactions"), ("interactions", "items")), strict=True
    ):
        common = collections.Counter(result[fixed] for result in results).most_common(1)[0][0]
        series = sorted((r for r in results if r[fixed] == common), key=lambda r: r[size])
        if len({r[size] for r in series}) < 2:
            axis.set_visible(False)
            continue
        x = np.array([r[size] for r in series], np.float64)
        for name, label in PLOTTED:
            y = np.array([r[name] for r in series], np.float64)
            slope = float(np.polyfit(np.log(x), np.log(y), 1)[0])
            exponents.setdefault(size, {})[name] = slope
            axis.loglog(x, y, "o-", label=f"{label}: ~{size}^{slope:.2f}")
        axis.set_xlabel(f"{size} ({fixed} = {common:,})")
        axis.set_title(f"cost against {size}")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return exponents


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", help="ITEMS:INTERACTIONS,... (several sizes in one run)")
    parser.add_argument("--items", type=int, help="one size: items (with --interactions)")
    parser.add_argument("--interactions", type=int, help="one size: interactions")
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--budget", type=float, default=30.0, help="fit's time_budget_s")
    parser.add_argument("--calls", type=int, default=50, help="one-user recommend calls")
    parser.add_argument("--ranker-epochs", type=int, default=0)
    parser.add_argument("--history-seq-len", type=int, default=8, help="items the models read")
    parser.add_argument("--epochs", type=int, default=1, help="most retrieval epochs")
    # 10: at 1M items validation HR@10 was the same as at FitOptions' 200 (docs/scaling-costs.md).
    parser.add_argument(
        "--num-retrieved", type=int, default=10, help="retrieval's depth beside the prior"
    )
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--plot", help="write the log-log PNG here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    settings = (
        args.users,
        args.budget,
        args.calls,
        args.ranker_epochs,
        args.history_seq_len,
        args.epochs,
        args.num_retrieved,
    )
    if args.child:
        ((items, interactions),) = parse_sizes(args.child)
        print(json.dumps(measure(items, interactions, *settings)))
        return
    if args.sizes:
        sizes = parse_sizes(args.sizes)
    elif args.items and args.interactions:
        sizes = [(args.items, args.interactions)]
    else:
        parser.error("expected --sizes, or --items with --interactions")
    results = []
    for items, interactions in sizes:
        log(f"size {items:,} items, {interactions:,} interactions, {args.users:,} users")
        command = [sys.executable, "-m", "benchmarks.scaling", "--child", f"{items}:{interactions}"]
        command += ["--users", str(args.users), "--budget", str(args.budget)]
        command += ["--calls", str(args.calls), "--ranker-epochs", str(args.ranker_epochs)]
        command += ["--history-seq-len", str(args.history_seq_len), "--epochs", str(args.epochs)]
        command += ["--num-retrieved", str(args.num_retrieved)]
        done = subprocess.run(command, stdout=subprocess.PIPE, text=True, env=os.environ.copy())
        if done.returncode:
            raise SystemExit(f"size {items}:{interactions} failed (exit {done.returncode})")
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        if args.json:  # after every size: a long run leaves what it measured
            Path(args.json).write_text(json.dumps(results, indent=1))
    print(table(results))
    if args.plot:
        print(json.dumps(plot(results, args.plot), indent=1))


if __name__ == "__main__":
    main()
