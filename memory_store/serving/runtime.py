"""Serving one codebook version: request validation, per-row routing, generation, streaming,
scoring, and the continuous batch of a serving loop.

Every call takes the ``LiveVersion`` to serve from; the engine passes its current one, so a
request (or a batch) is answered on one version even while an update publishes the next.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from memory_store.codebook.live import LiveVersion
from memory_store.errors import InvalidInput, NotFound
from memory_store.ids import is_memory_id
from memory_store.keys import KeyEncoder
from memory_store.lora.layer import use_state
from memory_store.lora.weights import AdapterWeights
from memory_store.models.access import ModelLayout
from memory_store.pieces_io import check_text
from memory_store.serving.adapters import AdapterCache
from memory_store.serving.batching import BatchGenerator, RouterFn, RowOutput, RowPlan, RunningBatch
from memory_store.serving.lora import BatchState
from memory_store.types import GenerationRequest, GenerationResult, Route
from memory_store.update import losses

BASE = Route(None, 0.0, None)


@dataclass(frozen=True)
class StreamChunk:
    text: str
    result: GenerationResult | None = None


@dataclass(frozen=True)
class RowUpdate:
    """What one step of a ``ServingBatch`` did to one request: new text of a streamed one
    (``text``, possibly empty) and, when it finished, its result."""

    tag: Any
    text: str
    result: GenerationResult | None


class TextCursor:
    """The text of a streamed row handed out so far. Text that could still turn into a stop
    sequence, or an incomplete UTF-8 sequence, is held back until the row is done."""

    def __init__(self, stop: Sequence[str]) -> None:
        self.hold = max((len(s) for s in stop), default=1) - 1
        self.sent = 0

    def delta(self, row: RowOutput) -> str:
        """The new text of ``row`` that is safe to hand out now (all of it once done)."""
        safe = len(row.text) if row.done else max(len(row.text) - self.hold, 0)
        text = row.text[:safe]
        if text.endswith("\ufffd") and not row.done:
            text = text[:-1]
        if len(text) <= self.sent:
            return ""
        new, self.sent = text[self.sent:], len(text)
        return new


@dataclass
class _Tag:
    live: LiveVersion
    tag: Any
    cursor: TextCursor | None  # streamed rows only


@dataclass(frozen=True)
class Score:
    logprob: float  # summed log-probability of the target tokens
    token_accuracy: float  # fraction of target tokens that are the argmax
    memory_id: str | None


class ServingRuntime:
    """Generation on the frozen model with each row's memory, routed or fixed."""

    def __init__(self, model, tokenizer, layout: ModelLayout, encoder: KeyEncoder,
                 adapters: AdapterCache) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.encoder = encoder
        self.adapters = adapters
        self.generator = BatchGenerator(model, tokenizer, layout, encoder.pooling)

    # ------------------------------------------------------------------ routing
    def route(self, live: LiveVersion, prompts: Sequence[str]) -> list[Route]:
        """Which memory would serve each prompt (None: the base model)."""
        for i, p in enumerate(prompts):
            check_text(p, f"prompts[{i}]")
        return live.router.route(self.encoder.keys(prompts))

    def adapter(self, live: LiveVersion, memory_id: str | None) -> AdapterWeights | None:
        return None if memory_id is None else self.adapters.of(live.memory_record(memory_id))

    def router_fn(self, live: LiveVersion) -> RouterFn:
        """The routing step the generator calls inside a prefill: raw keys -> routes, adapters."""
        def router(raw: torch.Tensor) -> list[tuple[Route, AdapterWeights | None]]:
            routes = live.router.route(self.encoder.unit(raw))
            return [(r, self.adapter(live, r.memory_id)) for r in routes]
        return router

    # ------------------------------------------------------------------ generation
    def plans(self, live: LiveVersion, requests: Sequence[GenerationRequest]) -> list[RowPlan]:
        """Validated row plans; raises InvalidInput / NotFound naming the field."""
        plans = []
        for i, req in enumerate(requests):
            check_text(req.prompt, f"requests[{i}].prompt")
            if req.max_new_tokens < 1:
                raise InvalidInput("max_new_tokens must be >= 1", field="max_new_tokens")
            if not 0 <= req.min_tokens <= req.max_new_tokens:
                raise InvalidInput(f"min_tokens must be between 0 and max_new_tokens "
                                   f"({req.max_new_tokens}); got {req.min_tokens}",
                                   field="min_tokens")
            plan = RowPlan(req.prompt, req.max_new_tokens, req.temperature, req.top_p,
                           tuple(req.stop), req.seed, ignore_eos=bool(req.ignore_eos),
                           min_tokens=req.min_tokens)
            if req.memory == "auto":
                pass
            elif req.memory == "none":
                plan.auto, plan.route = False, BASE
            elif is_memory_id(req.memory) and req.memory in live.snapshot.memories:
                plan.auto = False
                plan.adapter = self.adapter(live, req.memory)
                plan.route = Route(req.memory, 1.0, None)
            else:
                raise NotFound(f"no memory {req.memory!r} in codebook version {live.version}",
                               field="memory")
            plans.append(plan)
        return plans

    def result(self, live: LiveVersion, row: RowOutput) -> GenerationResult:
        route = row.route or BASE
        return GenerationResult(row.text, route.memory_id, route.gate, route.similarity,
                                live.version, row.prompt_tokens, len(row.token_ids),
                                row.finish_reason)

    def generate(self, live: LiveVersion, requests: Sequence[GenerationRequest]
                 ) -> list[GenerationResult]:
        plans = self.plans(live, requests)
        if not plans:
            return []
        rows = self.generator.generate(plans, self.router_fn(live))
        return [self.result(live, r) for r in rows]

    def stream(self, live: LiveVersion, request: GenerationRequest) -> Iterator[StreamChunk]:
        """Text deltas; the last chunk carries the full result. Text that could still turn
        into a stop sequence, or an incomplete UTF-8 sequence, is held back."""
        plans = self.plans(live, [request])
        cursor = TextCursor(request.stop)
        row = None
        for rows in self.generator.stream(plans, self.router_fn(live)):
            row = rows[0]
            if text := cursor.delta(row):
                yield StreamChunk(text)
        yield StreamChunk("", self.result(live, row))

    @torch.no_grad()
    def score(self, live: LiveVersion, pairs: Sequence[tuple[str, str]], memory: str = "auto",
              batch_size: int = 32) -> list[Score]:
        """Teacher-forced scores of ``target`` after ``prompt``, each prompt routed as
        generation would route it: summed log-probability and token accuracy."""
        out: list[Score] = []
        for start in range(0, len(pairs), batch_size):
            chunk = list(pairs[start:start + batch_size])
            prompts = [p for p, _ in chunk]
            if memory == "auto":
                routes = live.router.route(self.encoder.keys(prompts))
            else:
                plan = self.plans(live, [GenerationRequest(prompts[0], memory=memory)])[0]
                routes = [plan.route] * len(chunk)
            adapters = [self.adapter(live, r.memory_id) for r in routes]
            batch = losses.tokenize_pairs(self.tokenizer, chunk, self.model.device)
            with use_state(BatchState(adapters, self.model.dtype, self.model.device)):
                logits = losses.forward_logits(self.model, batch)
            logp = losses.sequence_logprob(logits, batch.labels)
            acc = losses.target_accuracy(logits, batch.labels)
            out += [Score(float(lp), float(a), r.memory_id)
                    for lp, a, r in zip(logp, acc, routes, strict=True)]
        return out


class ServingBatch:
    """Continuous batching (``RunningBatch``): requests join between decoding steps, each
    routed on the codebook version live when it joins, and leave as soon as they finish (or
    when ``drop`` removes them). Streamed requests are rows like the others: each step hands
    out their new text. One caller at a time."""

    def __init__(self, runtime: ServingRuntime, current: Callable[[], LiveVersion]) -> None:
        self._runtime = runtime
        self._current = current
        self._rows = RunningBatch(runtime.generator)

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def can_join(self) -> bool:
        return self._rows.can_join

    def add(self, requests: Sequence[GenerationRequest], tags: Sequence[Any],
            streamed: Sequence[bool] | None = None) -> None:
        """Validate, route and prefill ``requests`` (``tags`` name them in ``step``'s results;
        ``streamed[i]``: request i gets its text after every step). Raises as ``generate``
        does; then none of them joined."""
        live = self._current()
        plans = self._runtime.plans(live, requests)
        streamed = [False] * len(plans) if streamed is None else list(streamed)
        for plan, s in zip(plans, streamed, strict=True):
            plan.stream = s
        if plans:
            self._rows.add(plans, self._runtime.router_fn(live),
                           [_Tag(live, t, TextCursor(r.stop) if s else None)
                            for t, r, s in zip(tags, requests, streamed, strict=True)])

    def step(self) -> list[RowUpdate]:
        """One token for every running request. Updates for the streamed requests with new
        text and for every request that finished (with its result)."""
        streamed = [(t, row) for t, row in self._rows.outputs() if t.cursor is not None]
        finished = {id(t): (t, row) for t, row in self._rows.step()}
        updates = []
        for t, row in streamed:
            text = t.cursor.delta(row)
            done = finished.pop(id(t), None)
            if text or done is not None:
                result = None if done is None else self._runtime.result(t.live, row)
                updates.append(RowUpdate(t.tag, text, result))
        updates += [RowUpdate(t.tag, "", self._runtime.result(t.live, row))
                    for t, row in finished.values()]
        return updates

    def drop(self, gone: Callable[[Any], bool]) -> list[Any]:
        """Remove the running requests whose tag ``gone`` accepts; their tags."""
        return [t.tag for t in self._rows.drop(lambda t: gone(t.tag))]

    def tags(self) -> list[Any]:
        """Tags of the running requests."""
        return [t.tag for t in self._rows.tags()]

    def streamed_rows(self) -> int:
        """How many of the running requests are streamed."""
        return sum(t.cursor is not None for t in self._rows.tags())
