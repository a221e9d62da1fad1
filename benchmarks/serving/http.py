"""The real service in this process (uvicorn on 127.0.0.1, a free port) and load generators.

Running the server in the benchmark's own process lets one run compare the base model, LOKA and
the naive baseline side by side, and lets the benchmark read the engine's counters. The clients
run in a child process (``benchmarks.serving.loadgen``), as real clients would run elsewhere.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import httpx
import uvicorn

from service.config import Settings
from service.main import create_app
from service.state import ServiceState

logger = logging.getLogger(__name__)

READY_TIMEOUT_S = 600.0
LOAD_TIMEOUT_S = 900.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Service:
    """A running in-process service: its base URL and its runtime state."""

    url: str
    state: ServiceState


@contextlib.contextmanager
def running_service(settings: Settings) -> Iterator[Service]:
    """Start the app with uvicorn in a thread; wait until ``/ready``; stop it afterwards."""
    port = free_port()
    settings = settings.model_copy(update={"host": "127.0.0.1", "port": port})
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, name="bench-uvicorn", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + READY_TIMEOUT_S
    state: ServiceState = app.state.service
    try:
        while True:
            if state.load_error is not None:
                raise RuntimeError(f"the service failed to load: {state.load_error}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/ready", timeout=2.0).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("the service did not become ready")
            time.sleep(0.1)
        yield Service(url, state)
    finally:
        server.should_exit = True
        thread.join(60.0)


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
