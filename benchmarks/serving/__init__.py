"""Serving benchmark: the frozen base model, LOKA with routed memories and a naive PEFT
baseline side by side (latency, throughput under concurrency, routing cost, search against
codebook size, resident memory against codebook size, update latency).

    python -m benchmarks.serving [--quick]     # writes benchmarks/results/serving/

Importing this package loads nothing heavy (the load generator runs as its child process).
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (see ``benchmarks.serving.run``)."""
    from benchmarks.serving.run import main as run_main

    return run_main(argv)
