"""The app factory: ``create_app(settings)`` builds the FastAPI app; the lifespan loads the model.

The engine (``Loka.open``: base model, tokenizer, store) is loaded in a background thread when
the app starts, so the server answers at once: ``/health`` and ``/ready`` say 503 until the
engine, the job queue and the generator are ready. Nothing heavy happens at import time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI

from memory_store import Loka
from memory_store.errors import LokaError
from service import __version__
from service.api.routes import (
    codebook,
    generate,
    health,
    jobs,
    knowledge,
    memories,
    metrics,
    openai,
    updates,
)
from service.body_limit import BodyLimitMiddleware
from service.config import Settings
from service.errors import install_error_handlers
from service.follower import HeadFollower
from service.jobs import Job, JobQueue
from service.metrics import Metrics, MetricsMiddleware
from service.scheduler import GenerationScheduler
from service.state import ServiceState

logger = logging.getLogger(__name__)


def _on_job_finished(state: ServiceState, job: Job) -> None:
    seconds = None
    if job.started_at is not None and job.finished_at is not None:
        seconds = job.finished_at - job.started_at
    state.metrics.observe_job(job.kind, job.status, seconds)


def load_failure(exc: BaseException) -> str:
    """A one-line reason for a failed start-up (the store's or the model's problem)."""
    if isinstance(exc, LokaError):
        return f"{exc.type}: {exc.message}"
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def _load(state: ServiceState) -> None:
    """Open the engine and start the job worker and the generator (runs in a thread)."""
    settings = state.settings
    try:
        started = time.perf_counter()
        logger.info(
            "loading model %s with store %s", settings.model or "(built-in default)",
            settings.store_dir,
        )
        engine = Loka.open(  # creates the store directory; names why it cannot
            settings.store_dir, model=settings.model, dtype=settings.dtype,
            device=settings.device, adapter_cache_size=settings.adapter_cache_size,
            threads=settings.threads, database_url=settings.database_url or "",
        )
        if state.closing:
            engine.close()
            return
        state.engine = engine
        job_queue = JobQueue(
            engine.store, engine, max_attempts=settings.job_max_attempts,
            lease_s=settings.job_lease_s,
            on_finished=lambda job: _on_job_finished(state, job),
        )
        job_queue.start(worker=settings.worker)
        state.jobs = job_queue
        state.follower = HeadFollower(engine, poll_s=settings.follow_poll_s)
        state.follower.start()
        state.generator = GenerationScheduler(
            engine, state.metrics, max_prompt_tokens=settings.max_prompt_tokens,
            max_batch_size=settings.max_batch_size, batch_wait_ms=settings.batch_wait_ms,
        )
        logger.info(
            "ready: model %s, codebook version %d, %s (%.1f s)", engine.model_name,
            engine.version, "with a job worker" if settings.worker else "no job worker",
            time.perf_counter() - started,
        )
    except BaseException as exc:
        state.load_error = load_failure(exc)
        if isinstance(exc, LokaError | OSError):  # a named problem: one line, no traceback
            logger.error("loading the engine failed: %s", state.load_error)
        else:
            logger.exception("loading the engine failed")
        if state.on_load_failed is not None:
            state.on_load_failed(exc)
    finally:
        state.loaded.set()


def _shutdown(state: ServiceState) -> None:
    state.closing = True
    # the loader may still be inside Loka.open: wait for it so the engine is closed cleanly
    state.loaded.wait(60.0)
    worker_stopped = True
    if state.follower is not None:
        state.follower.stop()
    if state.jobs is not None:
        worker_stopped = state.jobs.stop(timeout=30.0)
    if state.generator is not None:
        state.generator.close()
    if state.engine is not None and worker_stopped:
        state.engine.close()
    logger.info("stopped")


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; the engine loads in the background once the app starts."""
    settings = settings or Settings()
    # the lambda reads ``state`` at scrape time, after it is bound below
    metrics_ = Metrics(lambda: (state.engine, state.jobs))
    state = ServiceState(settings=settings, metrics=metrics_)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loader = threading.Thread(target=_load, args=(state,), name="loka-load", daemon=True)
        loader.start()
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(_shutdown, state)

    app = FastAPI(
        title="LOKA Serve",
        version=__version__,
        summary="Edit and unlearn facts in a frozen causal LM with a codebook of LoRA memories.",
        lifespan=lifespan,
    )
    app.state.service = state
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes,
                       timeout_s=settings.body_timeout_s)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)  # outermost: sees the 413s
    for module in (health, generate, openai, updates, jobs, memories, knowledge, codebook,
                   metrics):
        app.include_router(module.router)
    return app
