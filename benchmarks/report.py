"""A `python -m phoenix_eqx.train` report beside the published results, and its validation
curve: `python -m benchmarks.report METRICS_JSON [--plot PNG]`.

The published rows are figures their papers report, not measured here; the table says so.
"""

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from phoenix_eqx.protocol import MODES
from phoenix_eqx.train import metric_columns

# Published full-ranking results on MovieLens-1M leave-two-out (item ids only), test HR@10 and
# NDCG@10: SASRec+ from Klenitskiy & Vasilev (RecSys 2023), BERT4Rec, HSTU and HSTU-large from
# Zhai et al. (2024, HSTU-large on its repository's split); the later rows as their authors
# report them: FuXi-alpha re-run on the standard split, eSASRec, HSTU-large re-scored by a
# mixture-of-logits scorer, and HSTU with a full softmax in a TensorFlow port.
PUBLISHED_ML_1M: dict[str, tuple[float, float]] = {
    "SASRec+ (full cross-entropy)": (0.3152, 0.1821),
    "BERT4Rec": (0.2843, 0.1537),
    "HSTU": (0.3097, 0.1720),
    "HSTU-large": (0.3294, 0.1893),
    "FuXi-alpha (standard split)": (0.3164, 0.1813),
    "eSASRec": (0.3133, 0.1772),
    "HSTU-large, mixture-of-logits scorer": (0.3412, 0.1979),
    "HSTU, full softmax (TensorFlow port)": (0.3419, 0.1944),
}


def published_rows(dataset: str) -> dict[str, tuple[float, float]]:
    """The published (HR@10, NDCG@10) of `dataset` under the same protocol (MovieLens-1M's
    only)."""
    return PUBLISHED_ML_1M if dataset == "movielens-1m" else {}


def comparison_table(report: dict, mode: str) -> Table:
    """The report's measured rows of `mode` under the published rows of its data set."""
    published = published_rows(report["dataset"])
    caption = "published: reported by their papers, not measured here" if published else None
    table = Table(
        title=f"{report['dataset']}: test items, {mode.replace('_', ' ')}", caption=caption
    )
    table.add_column("model")
    for column in metric_columns():
        table.add_column(column.replace("hit_rate", "HR").replace("ndcg", "NDCG"), justify="right")
    if mode == "seen_excluded":
        for name, (hit_rate, ndcg) in published.items():
            table.add_row(f"{name} (published)", f"{hit_rate:.4f}", f"{ndcg:.4f}", *["-"] * 4)
    for name, row in report["results"].items():
        table.add_row(name, *(f"{row['test'][mode][column]:.4f}" for column in metric_columns()))
    return table


def pyplot(console: Console):
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


def plot_validation(path: Path, history: list[dict], console: Console) -> None:
    """Validation HR@10 of each stage against seconds since fit started."""
    plt = pyplot(console)
    if plt is None:
        return
    figure, axis = plt.subplots(figsize=(7, 4))
    for stage in dict.fromkeys(record["stage"] for record in history):
        points = [(r["seconds"], r["hr@10"]) for r in history if r["stage"] == stage]
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


def main(argv: list[str] | None = None, console: Console | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__)
    parser.add_argument("metrics_json", help="a report of python -m phoenix_eqx.train")
    parser.add_argument("--plot", help="write the validation curve here (PNG)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    console = Console() if console is None else console
    report = json.loads(Path(args.metrics_json).read_text())
    for mode in MODES:
        console.print(comparison_table(report, mode))
    if args.plot:
        plot_validation(Path(args.plot), report["validation_history"], console)


if __name__ == "__main__":
    main()
