"""Serving benchmark: the frozen base model, LOKA with routed memories and a naive PEFT
baseline side by side (latency, throughput under concurrency, routing cost, search against
codebook size, resident memory against codebook size, update latency).

    python -m benchmarks.serving [--quick]     # writes benchmarks/results/serving/
    python -m benchmarks serving [--quick]     # the same
    python -m benchmarks serving --model smollm2   # benchmarks/results/serving_smollm2/

Importing this package loads nothing heavy (the load generator runs as its child process).
"""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_OUT = Path("benchmarks/results/serving")
HELP = "serving speed: base model vs LOKA vs a naive PEFT baseline (about 10 minutes)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark's options."""
    parser.add_argument("--quick", action="store_true",
                        help="the built-in model only, smaller sizes (about 1 minute)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"output folder (default: {DEFAULT_OUT})")
    parser.add_argument("--large-threads", type=int, default=1,
                        help="torch threads for the 87M model (default 1)")
    parser.add_argument("--model", default=None,
                        help="a real model (\"smollm2\" or a folder): batch-1 latency, "
                             "throughput at concurrency 16 and PEFT's mixed-adapter batching "
                             "on it only (writes benchmarks/results/serving_<name>/)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads with --model (default: Loka.open's choice)")


def _run(args: argparse.Namespace) -> int:
    if args.model is not None:
        from benchmarks.serving import real_model

        out = args.out
        if out == DEFAULT_OUT:
            name = args.model if args.model == "smollm2" else Path(args.model).name
            out = real_model.DEFAULT_OUT.with_name(f"serving_{name}")
        return real_model.run_and_write(args.model, args.quick, out, args.threads)
    from benchmarks.serving.run import run_and_write

    return run_and_write(args.quick, args.out, args.large_threads)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``serving`` to a command line's sub-commands (``python -m benchmarks serving``)."""
    p = subparsers.add_parser("serving", help=HELP, description=HELP)
    add_arguments(p)
    p.set_defaults(func=_run)


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.serving``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serving", description=HELP)
    add_arguments(parser)
    return _run(parser.parse_args(argv))
