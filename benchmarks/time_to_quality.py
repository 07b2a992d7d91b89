"""Plot validation HR@10 against fit's budget from `benchmarks.recommender_validation` runs, one
run per budget, so that a user can pick a budget:

    python -m benchmarks.recommender_validation 1m --budget 300 > budget_300.txt  # and so on
    python -m benchmarks.time_to_quality budget_*.txt --plot docs/ml1m_time_to_quality.png

Each file's last line is the run's JSON result. The plot shows, against fit minutes, retrieval
alone and both stages at the end of each fit (solid), and each fit's validation history
(faint: every epoch's HR@10 of the stage it validated, at the time it was validated).
"""

import argparse
import json
from pathlib import Path


def read_result(path: str) -> dict:
    """The JSON result a `recommender_validation` run printed last."""
    lines = [line for line in Path(path).read_text().splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"{path}: expected a recommender_validation output, got an empty file")
    result = json.loads(lines[-1])
    if "validation" not in result or "wall_s" not in result:
        raise ValueError(
            f"{path}: expected a result with 'validation' and 'wall_s' on its last line"
        )
    return result


def budget_points(results: list[dict]) -> list[dict]:
    """Per run, sorted by fit time: minutes, retrieval's and both stages' HR@10 as served
    (with the co-occurrence prior when fit chose one; None when the ranker did not train)."""
    points = []
    for result in results:
        validation = result["validation"]
        ranker = validation.get("cooccurrence", validation.get("ranker"))
        points.append(
            {
                "minutes": result["wall_s"] / 60,
                "retrieval": validation["retrieval"]["hr@10"],
                "both": None if ranker is None else ranker["hr@10"],
                "history": result.get("history", []),
            }
        )
    return sorted(points, key=lambda point: point["minutes"])


def plot(points: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for point in points:
        for stage, color in (("retrieval", "tab:blue"), ("ranker", "tab:orange")):
            epochs = [(t / 60, hr) for t, name, _, hr in point["history"] if name == stage]
            if epochs:
                axis.plot(*zip(*epochs, strict=True), color=color, alpha=0.25, lw=1)
    minutes = [point["minutes"] for point in points]
    axis.plot(
        minutes, [p["retrieval"] for p in points], "o-", color="tab:blue", label="retrieval alone"
    )
    both = [(p["minutes"], p["both"]) for p in points if p["both"] is not None]
    if both:
        axis.plot(*zip(*both, strict=True), "s-", color="tab:orange", label="retrieval + ranker")
    axis.set_xlabel("fit wall time (minutes, 2-core CPU)")
    axis.set_ylabel("validation HR@10")
    axis.grid(True, alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", help="recommender_validation outputs")
    parser.add_argument("--plot", required=True, help="write the PNG here")
    args = parser.parse_args(argv)
    points = budget_points([read_result(path) for path in args.results])
    for point in points:
        both = "-" if point["both"] is None else f"{point['both']:.4f}"
        print(f"{point['minutes']:6.1f} min: retrieval {point['retrieval']:.4f}, both {both}")
    plot(points, args.plot)


if __name__ == "__main__":
    main()
