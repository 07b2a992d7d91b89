"""Kernel microbenchmarks: `python -m phoenix_eqx.kernels.bench {attention,topk} [options]`."""

import argparse
import sys


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m phoenix_eqx.kernels.bench")
    parser.add_argument("op", choices=["attention", "topk"], help="which op to benchmark")
    args, rest = parser.parse_known_args(argv)
    if args.op == "attention":
        from .candidate_attention.bench import main as run
    else:
        from .corpus_top_k.bench import main as run
    run(rest)


if __name__ == "__main__":
    main(sys.argv[1:])
