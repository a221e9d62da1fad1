"""Load generators against the real service, which runs in this process
(``service.embedded.running_service``: uvicorn on 127.0.0.1, a free port).

Running the server in the benchmark's own process lets one run compare the base model, LOKA and
the naive baseline side by side, and lets the benchmark read the engine's counters. The clients
run in a child process (``benchmarks.serving.loadgen``), as real clients would run elsewhere.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from service.embedded import Service, running_service

__all__ = ["Answer", "LoadResult", "Service", "closed_loop", "running_service", "send"]

logger = logging.getLogger(__name__)

LOAD_TIMEOUT_S = 900.0


@dataclass(frozen=True)
class Answer:
    """One request as a client saw it."""

    latency: float  # seconds
    tokens: int  # completion tokens
    memory_id: str | None  # the memory that served it


@dataclass(frozen=True)
class LoadResult:
    """What a closed-loop load run measured: every client's answers, in order."""

    concurrency: int
    seconds: float
    workers: tuple[tuple[Answer, ...], ...]

    @property
    def answers(self) -> list[Answer]:
        return [a for w in self.workers for a in w]

    @property
    def tokens(self) -> int:
        return sum(a.tokens for a in self.answers)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds


def send(url: str, bodies: Sequence[Sequence[dict]]) -> LoadResult:
    """Client w sends ``bodies[w]`` back to back, all clients at once, from a child process
    (``benchmarks.serving.loadgen``)."""
    proc = subprocess.run([sys.executable, "-m", "benchmarks.serving.loadgen"],
                          input=json.dumps({"url": url, "bodies": bodies}), text=True,
                          capture_output=True, timeout=LOAD_TIMEOUT_S, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed: {proc.stderr[-2000:]}")
    out = json.loads(proc.stdout)
    workers = tuple(tuple(Answer(*a) for a in w) for w in out["workers"])
    return LoadResult(len(bodies), out["seconds"], workers)


def closed_loop(url: str, prompts: Sequence[str], concurrency: int, rounds: int,
                memory: str = "auto", max_new_tokens: int = 32) -> LoadResult:
    """``concurrency`` clients, each sending ``rounds`` requests back to back; client w always
    sends ``prompts[w]``, so with distinct prompts every in-flight request is a different one."""
    return send(url, [[{"prompt": prompts[w % len(prompts)], "max_new_tokens": max_new_tokens,
                        "memory": memory}] * rounds for w in range(concurrency)])
