"""Asynchronous client of LOKA Serve (same methods as :class:`loka_client.Client`)."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, TypeVar

import httpx

from loka_client import _calls
from loka_client._calls import DEFAULT_URL, Call, ClientBase
from loka_client.errors import ConnectionFailed, JobTimeout, ServiceUnavailable
from loka_client.models import (
    ChangeResult,
    CodebookInfo,
    EditLike,
    GenerateResponse,
    Health,
    Job,
    Memory,
    MemoryDetail,
    ModelCard,
    ModelList,
    OptionsLike,
    Piece,
    RetainLike,
    RouteResponse,
    UnlearnLike,
    VersionList,
)

logger = logging.getLogger(__name__)
T = TypeVar("T")


class AsyncClient(ClientBase):
    """Asyncio client of a LOKA Serve server.

    Args:
        base_url: Server address, e.g. ``"http://127.0.0.1:8000"``.
        api_token: Bearer token for reads and generation.
        admin_token: Bearer token for knowledge changes (updates, deletions, rollback, job
            cancellation). If only one of the two tokens is given it is used for everything.
        timeout: Seconds for each HTTP request.

    Use it as an async context manager (or await :meth:`close`) to release the connection pool.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        api_token: str | None = None,
        admin_token: str | None = None,
        timeout: float = 60.0,
    ) -> None:
        super().__init__(base_url, api_token, admin_token, timeout)
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout)

    async def close(self) -> None:
        """Close the underlying connection pool."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _send(self, call: Call[T]) -> T:
        logger.debug("%s %s", call.method, call.path)
        try:
            response = await self._http.request(**self._request_args(call))
        except httpx.TransportError as exc:
            raise ConnectionFailed(
                f"{call.method} {self.base_url}{call.path} failed: {exc!r}", type="connection"
            ) from exc
        return call.parse(_calls.check(response))

    # ---- service -------------------------------------------------------------------------

    async def health(self) -> Health:
        """``GET /health``: the server is up and its model loaded."""
        return await self._send(_calls.health())

    async def ready(self) -> Health:
        """``GET /ready``; raises :class:`ServiceUnavailable` while the model is loading."""
        return await self._send(_calls.ready())

    async def wait_until_ready(self, timeout: float = 300.0, poll_interval: float = 1.0) -> Health:
        """Poll ``/ready`` until it answers 200; connection errors and 503 are retried.

        Raises:
            TimeoutError: not ready within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                return await self.ready()
            except (ConnectionFailed, ServiceUnavailable) as exc:
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"{self.base_url} not ready after {timeout:g}s") from exc
            await asyncio.sleep(poll_interval)

    async def models(self) -> ModelList:
        """``GET /v1/models``: the OpenAI-compatible model list."""
        return await self._send(_calls.models())

    async def model(self, model_id: str) -> ModelCard:
        """``GET /v1/models/{id}``: ``"loka"``, ``"base"`` or a memory id."""
        return await self._send(_calls.model(model_id))

    async def metrics(self) -> str:
        """``GET /metrics``: Prometheus text exposition."""
        return await self._send(_calls.metrics())

    # ---- inference -----------------------------------------------------------------------

    async def generate(
        self,
        prompt: str,
        max_new_tokens: int = 32,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: Sequence[str] | None = None,
        memory: str = "auto",
        seed: int | None = None,
    ) -> GenerateResponse:
        """Complete ``prompt``.

        Args:
            memory: ``"auto"`` (routed by the gate), ``"none"`` (the base model) or a memory id.
            seed: Sampling seed, for reproducible output with ``temperature > 0``.
        """
        return await self._send(
            _calls.generate(prompt, max_new_tokens, temperature, top_p, stop, memory, seed)
        )

    async def route(self, prompt: str) -> RouteResponse:
        """Where ``prompt`` would be routed, without generating."""
        return await self._send(_calls.route(prompt))

    # ---- knowledge changes ---------------------------------------------------------------

    async def update(
        self,
        edits: Sequence[EditLike] = (),
        unlearn: Sequence[UnlearnLike] = (),
        retain: Sequence[RetainLike] = (),
        options: OptionsLike | None = None,
    ) -> Job:
        """Submit one update (edits and unlearns trained together); returns the queued job.

        Items may be :class:`~loka_client.models.Edit` / ``Unlearn`` / ``Retain`` models or
        plain dicts with the same keys; ``options`` an ``UpdateOptions`` or a dict.
        """
        return await self._send(_calls.update(edits, unlearn, retain, options))

    async def job(self, job_id: str) -> Job:
        """The current state of a job."""
        return await self._send(_calls.job(job_id))

    async def jobs(self, status: str | None = None, limit: int | None = None) -> list[Job]:
        """Jobs, newest first; optionally only those with ``status``, at most ``limit``."""
        return await self._send(_calls.jobs(status, limit))

    async def cancel_job(self, job_id: str) -> Job:
        """Ask the server to cancel a queued or running job; returns its state."""
        return await self._send(_calls.cancel_job(job_id))

    async def wait_for_job(
        self,
        job_id: str,
        timeout: float = 600.0,
        poll_interval: float = 0.5,
        on_progress: Callable[[Job], Any] | None = None,
    ) -> Job:
        """Poll a job until it succeeds.

        Args:
            on_progress: Called with the job's state after every poll (may be async).

        Raises:
            JobFailed: the job ended ``failed`` or ``cancelled``.
            JobTimeout: still unfinished after ``timeout`` seconds (a ``TimeoutError``).
        """
        deadline = time.monotonic() + timeout
        while True:
            state = await self.job(job_id)
            if on_progress is not None:
                outcome = on_progress(state)
                if inspect.isawaitable(outcome):
                    await outcome
            if _calls.finished(state):
                return state
            if time.monotonic() >= deadline:
                raise JobTimeout(state, timeout)
            await asyncio.sleep(poll_interval)

    async def delete_knowledge(self, piece_id: str) -> Job:
        """Remove one knowledge piece; its memory is retrained in a job, returned queued."""
        return await self._send(_calls.delete_knowledge(piece_id))

    async def delete_memory(self, memory_id: str, timeout: float = 600.0) -> ChangeResult:
        """Remove a memory and all its pieces (a job on the server; waits for it)."""
        job = await self._send(_calls.delete_memory(memory_id))
        return _change(await self.wait_for_job(job.id, timeout=timeout))

    async def versions(self) -> VersionList:
        """Every published codebook version (the rollback targets)."""
        return await self._send(_calls.versions())

    async def rollback(self, version: int, timeout: float = 600.0) -> ChangeResult:
        """Publish a new codebook version equal to an earlier ``version`` (a job on the
        server; waits for it)."""
        job = await self._send(_calls.rollback(version))
        return _change(await self.wait_for_job(job.id, timeout=timeout))

    # ---- reads ---------------------------------------------------------------------------

    async def memories(self) -> list[Memory]:
        """The memories of the current codebook."""
        return await self._send(_calls.memories())

    async def memory(self, memory_id: str) -> MemoryDetail:
        """One memory with its pieces, kind, conflict decision and key similarity stats."""
        return await self._send(_calls.memory(memory_id))

    async def knowledge(self, kind: str | None = None, memory_id: str | None = None) -> list[Piece]:
        """Stored knowledge pieces, optionally only of one ``kind`` or one memory."""
        return await self._send(_calls.knowledge(kind, memory_id))

    async def piece(self, piece_id: str) -> Piece:
        """One stored knowledge piece."""
        return await self._send(_calls.piece(piece_id))

    async def codebook(self) -> CodebookInfo:
        """The current codebook version and its counts."""
        return await self._send(_calls.codebook())


def _change(job: Job) -> ChangeResult:
    """The change a finished job made."""
    assert job.result is not None
    return ChangeResult.model_validate(job.result.model_dump())
