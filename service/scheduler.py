"""Generation off the event loop: every request, streamed or not, is a row of one running batch.

Requests are served by continuous batching: one worker thread keeps a running batch of rows
(``Loka.batch()``) and, between two decoding steps, lets the requests that arrived meanwhile
join it (up to ``max_batch_size`` rows; one prefill for all of them, each row routed on its own)
while finished rows leave at once. When the batch is empty, the first request waits at most
``batch_wait_ms`` for company. Requests that fail to join together (an unknown memory id) join
one by one, so each request gets its own answer or error.

A streamed request is a row like the others: after each decoding step the worker hands each
stream its new text through a queue on the stream's event loop (``call_soon_threadsafe``), and
a stream whose consumer went away (client disconnected) is removed from the batch before the
next step. The first chunk of a stream (empty) says that it joined the batch, so that errors
of joining (an unknown memory, a prompt too long) reach the caller before any event is sent.

Serving forwards run one at a time (batch steps, joins, routing), under one lock: the engine
installs its key and routing hooks on the shared model for the duration of a forward, and on
CPU concurrent forwards buy little that batching does not. Training jobs run beside them.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from memory_store.errors import InvalidInput, LokaError
from memory_store.types import GenerationRequest, GenerationResult, Route
from service.metrics import Metrics

if TYPE_CHECKING:
    from memory_store import Loka
    from memory_store.serving.runtime import ServingBatch

logger = logging.getLogger(__name__)

_STOP = object()


class _Sink:
    """Where a stream's chunks go: a queue on the consumer's event loop; ``gone`` once the
    consumer stopped reading (set from the loop, read by the worker)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.chunks: asyncio.Queue[Any] = asyncio.Queue()
        self.gone = threading.Event()

    def put(self, value: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.chunks.put_nowait, value)
        except RuntimeError:  # the loop is closed
            self.gone.set()


@dataclass
class _Item:
    request: GenerationRequest
    field: str
    future: asyncio.Future[GenerationResult]
    loop: asyncio.AbstractEventLoop
    sink: _Sink | None = None  # streamed requests
    joined: float = 0.0  # perf_counter when it joined the running batch

    @property
    def cancelled(self) -> bool:
        return self.sink.gone.is_set() if self.sink is not None else self.future.done()


@dataclass(frozen=True)
class Chunk:
    """A piece of streamed text; the last chunk of a stream carries the result."""

    text: str
    result: GenerationResult | None


def _resolve(item: _Item, result: GenerationResult | None, error: BaseException | None) -> None:
    if item.sink is not None:  # a stream: its last chunk, or its error, then the end
        if error is not None:
            item.sink.put(error)
        elif result is not None:
            item.sink.put(Chunk("", result))
        item.sink.put(_STOP)
        return

    def settle() -> None:
        if item.future.done():  # the caller went away
            return
        if error is not None:
            item.future.set_exception(error)
        else:
            item.future.set_result(result)  # type: ignore[arg-type]

    with contextlib.suppress(RuntimeError):  # the loop is closed (shutdown)
        item.loop.call_soon_threadsafe(settle)


class GenerationScheduler:
    """Serves generation requests with the engine from worker threads."""

    def __init__(
        self,
        engine: Loka,
        metrics: Metrics,
        *,
        max_prompt_tokens: int,
        max_batch_size: int = 8,
        batch_wait_ms: float = 2.0,
    ) -> None:
        self._engine = engine
        self._metrics = metrics
        self._max_prompt_tokens = max_prompt_tokens
        self._max_batch = max_batch_size
        self._wait_s = batch_wait_ms / 1000.0
        self._queue: queue.Queue[Any] = queue.Queue()
        self._forward = threading.Lock()  # one serving forward at a time
        # a private tokenizer for counting: the engine's one changes its padding state while it
        # encodes batches, and a fast tokenizer refuses concurrent use while that happens
        self._counter = copy.deepcopy(engine.tokenizer)
        self._count_lock = threading.Lock()
        self._thread = threading.Thread(target=self._work, name="loka-generate", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the worker thread after the requests already queued."""
        self._queue.put(_STOP)
        self._thread.join(timeout)

    def route(self, prompts: Sequence[str]) -> list[Route]:
        """The engine's routes for ``prompts`` (blocking; call it from a worker thread)."""
        with self._forward:
            return self._engine.route(prompts)

    # -- checks -------------------------------------------------------------------------------

    def count_tokens(self, text: str, special: bool = False) -> int:
        """Number of tokens of ``text`` (with the special tokens the model adds to a prompt
        when ``special``)."""
        with self._count_lock:
            return len(self._counter(text, add_special_tokens=special)["input_ids"])

    def _check_prompt(self, request: GenerationRequest, field: str) -> None:
        n = self.count_tokens(request.prompt)
        if n > self._max_prompt_tokens:
            raise InvalidInput(
                f"{field}: at most {self._max_prompt_tokens} prompt tokens (got {n})", field=field
            )

    # -- batched generation -------------------------------------------------------------------

    async def generate(self, request: GenerationRequest, field: str = "prompt") -> GenerationResult:
        """Generate one completion (batched with whatever else is waiting)."""
        return (await self.generate_many([request], field))[0]

    async def generate_many(
        self, requests: Sequence[GenerationRequest], field: str = "prompt"
    ) -> list[GenerationResult]:
        """Generate several completions; the first error is raised."""
        loop = asyncio.get_running_loop()
        items = [_Item(r, field, loop.create_future(), loop) for r in requests]
        for item in items:
            self._queue.put(item)
        return list(await asyncio.gather(*(i.future for i in items)))

    def _work(self) -> None:
        batch = self._engine.batch()
        stopping = False
        while True:
            if not len(batch):
                if stopping:
                    return
                first = self._queue.get()  # idle: block until a request comes
                if first is _STOP:
                    return
                arrived, stopping = self._gather([first], time.monotonic() + self._wait_s)
            elif batch.can_join and not stopping:
                arrived, stopping = self._gather([], None, self._max_batch - len(batch))
            else:
                arrived = []
            if arrived:
                self._join(batch, arrived)
            if len(batch):
                self._step(batch)

    def _gather(self, items: list[Any], deadline: float | None,
                room: int | None = None) -> tuple[list[_Item], bool]:
        """More queued requests: wait until ``deadline`` for them, or (None) take only what is
        queued. Returns them and whether the stop sentinel was met."""
        room = self._max_batch if room is None else room
        while len(items) < room:
            try:
                if deadline is None:
                    nxt = self._queue.get_nowait()
                else:
                    nxt = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if nxt is _STOP:
                return items, True
            items.append(nxt)
        return items, False

    def _join(self, batch: ServingBatch, items: list[_Item]) -> None:
        """Let ``items`` join the running batch: together if they can, else one by one."""
        ready: list[_Item] = []
        for item in items:
            if item.cancelled:  # the caller went away while waiting
                continue
            try:
                self._check_prompt(item.request, item.field)
            except LokaError as exc:
                _resolve(item, None, exc)
                continue
            ready.append(item)
        if not ready:
            return
        now = time.perf_counter()
        for item in ready:
            item.joined = now
        try:
            with self._forward:
                batch.add([i.request for i in ready], ready, [i.sink is not None for i in ready])
        except Exception as exc:
            if len(ready) == 1:
                _resolve(ready[0], None, exc)
                return
            logger.debug("%d requests failed to join (%s); joining one by one", len(ready), exc)
            for item in ready:
                self._join(batch, [item])
            return
        for item in ready:
            if item.sink is not None:
                item.sink.put(Chunk("", None))  # joined

    def _step(self, batch: ServingBatch) -> None:
        """One decoding step of the running batch (without the streams whose consumer went
        away); hand the streams their new text and answer the requests that finished."""
        for item in batch.drop(lambda item: item.cancelled):
            logger.debug("a stream's consumer went away; its row left the batch")
            self._metrics.streams_cancelled.inc()
            _resolve(item, None, None)
        if not len(batch):
            return
        running = batch.tags()
        streams = batch.streamed_rows()
        try:
            with self._forward:
                updates = batch.step()
        except Exception as exc:  # the batch is gone: every running request gets the error
            logger.exception("a decoding step failed")
            for item in running:
                _resolve(item, None, exc)
            return
        self._metrics.observe_step(len(running), streams)
        now = time.perf_counter()
        for update in updates:
            item: _Item = update.tag
            if item.sink is not None and update.text:
                item.sink.put(Chunk(update.text, None))
            if update.result is not None:
                self._metrics.observe_generation(item.request.memory, update.result,
                                                 now - item.joined, stream=item.sink is not None)
                _resolve(item, update.result, None)

    # -- streaming ----------------------------------------------------------------------------

    async def stream(
        self, request: GenerationRequest, field: str = "prompt"
    ) -> AsyncIterator[Chunk]:
        """Stream one completion as a row of the running batch. The first chunk (empty) comes
        once it joined; errors of joining are raised before it. The last chunk carries the
        result. Stopping the iteration removes the row at the next step."""
        loop = asyncio.get_running_loop()
        sink = _Sink(loop)
        self._queue.put(_Item(request, field, loop.create_future(), loop, sink))
        try:
            while True:
                value = await sink.chunks.get()
                if value is _STOP:
                    return
                if isinstance(value, BaseException):
                    raise value
                yield value
        finally:
            sink.gone.set()
