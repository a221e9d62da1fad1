"""Prometheus metrics of one app (its own ``CollectorRegistry``, so apps and tests never share).

Requests and latency come from an ASGI middleware labelled by route template (never the raw
path, which would explode the label set); generation, tokens and gate decisions from the
generation layer; jobs and the codebook size are read at scrape time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from memory_store.types import GenerationResult

if TYPE_CHECKING:
    from memory_store import Loka
    from service.jobs import JobQueue

logger = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_LATEST
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_JOB_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
_JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")


class _StateCollector(Collector):
    """Gauges read at scrape time: readiness, codebook version and size, jobs by status."""

    def __init__(self, state: Callable[[], tuple[Loka | None, JobQueue | None]]) -> None:
        self._state = state

    def collect(self) -> Iterator[Metric]:
        engine, jobs = self._state()
        ready = GaugeMetricFamily("loka_ready", "1 once the model and store are loaded")
        ready.add_metric([], 1.0 if engine is not None else 0.0)
        yield ready
        if engine is not None:
            try:
                info = engine.codebook_info()
            except Exception:  # a scrape must not fail because the store is busy
                logger.exception("metrics: codebook_info failed")
                info = None
            if info is not None:
                for key, name, doc in (
                    ("version", "loka_codebook_version", "current codebook version"),
                    ("n_memories", "loka_codebook_memories", "memories in the codebook"),
                    ("n_pieces", "loka_codebook_pieces", "knowledge pieces in the codebook"),
                ):
                    g = GaugeMetricFamily(name, doc)
                    g.add_metric([], float(info.get(key, 0)))
                    yield g
        if jobs is not None:
            try:
                counts = jobs.counts()
            except Exception:
                logger.exception("metrics: job counts failed")
                counts = None
            if counts is not None:
                g = GaugeMetricFamily("loka_jobs", "jobs by status", labels=["status"])
                for status in _JOB_STATUSES:
                    g.add_metric([status], float(counts.get(status, 0)))
                yield g


class Metrics:
    """The metrics of one app."""

    def __init__(self, state: Callable[[], tuple[Loka | None, JobQueue | None]]) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "loka_http_requests", "HTTP requests", ["method", "route", "status"], registry=r
        )
        self.latency = Histogram(
            "loka_http_request_duration_seconds", "HTTP request latency (streams: until the end)",
            ["method", "route"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.generations = Counter(
            "loka_generations", "generated completions by memory selection",
            ["memory"], registry=r,
        )
        self.generation_latency = Histogram(
            "loka_generation_duration_seconds", "time to generate one completion",
            ["stream"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.tokens = Counter("loka_tokens", "prompt and completion tokens", ["kind"], registry=r)
        self.gate = Counter(
            "loka_gate_decisions", 'routed ("auto") generations: served by a memory or the base',
            ["decision"], registry=r,
        )
        self.batch_rows = Histogram(
            "loka_batch_rows", "rows (requests) in one decoding step of the running batch",
            buckets=_BATCH_BUCKETS, registry=r,
        )
        self.decode_steps = Counter(
            "loka_decode_steps", "decoding steps of the running batch by its rows: all "
            '"plain" (not streamed), all "streamed", or "mixed"', ["rows"], registry=r,
        )
        self.streams_cancelled = Counter(
            "loka_streams_cancelled", "streams whose client went away before they finished "
            "(their rows left the running batch)", registry=r,
        )
        self.jobs_finished = Counter(
            "loka_jobs_finished", "finished jobs", ["kind", "status"], registry=r
        )
        self.job_duration = Histogram(
            "loka_job_duration_seconds", "time from start to end of a job", ["kind"],
            buckets=_JOB_BUCKETS, registry=r,
        )
        r.register(_StateCollector(state))

    def observe_generation(
        self, selection: str, result: GenerationResult, seconds: float, stream: bool
    ) -> None:
        """Count one completion: its selection mode, tokens, gate decision, latency."""
        mode = selection if selection in ("auto", "none") else "pinned"
        self.generations.labels(mode).inc()
        self.tokens.labels("prompt").inc(result.prompt_tokens)
        self.tokens.labels("completion").inc(result.completion_tokens)
        if mode == "auto":
            self.gate.labels("memory" if result.memory_id is not None else "base").inc()
        self.generation_latency.labels("true" if stream else "false").observe(seconds)

    def observe_step(self, rows: int, streamed: int) -> None:
        """Count one decoding step of ``rows`` rows, ``streamed`` of them streamed."""
        self.batch_rows.observe(rows)
        kind = "plain" if streamed == 0 else "streamed" if streamed == rows else "mixed"
        self.decode_steps.labels(kind).inc()

    def observe_job(self, kind: str, status: str, seconds: float | None) -> None:
        """Count a finished job."""
        self.jobs_finished.labels(kind, status).inc()
        if seconds is not None:
            self.job_duration.labels(kind).observe(seconds)

    def render(self) -> bytes:
        """The exposition text of every metric."""
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Pure ASGI middleware counting requests and timing them, by route template."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = _route_label(scope)
            method = scope.get("method", "")
            self.metrics.requests.labels(method, route, str(status["code"])).inc()
            self.metrics.latency.labels(method, route).observe(time.perf_counter() - start)


def _route_label(scope: dict[str, Any]) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"
