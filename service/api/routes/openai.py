"""OpenAI-compatible endpoints: ``/v1/models``, ``/v1/completions``, ``/v1/chat/completions``.

Shapes follow vLLM (see ``service.openai_compat``). With ``stream: true`` the answer is a
``text/event-stream`` of ``data: {chunk}`` events ending with ``data: [DONE]``; an error after
the stream started is sent as a ``data: {"error": {...}}`` event before ``[DONE]``.

The unlearning policy of ``service.policy`` applies as on the native routes: ``model: "base"``
or a memory id may be refused to a non-admin caller (403 naming ``model``), a hidden memory is
``model_not_found`` for it, a prompt routed to unlearned knowledge is served by it whatever the
model asked for, and the ``loka`` field of a choice withholds how such a prompt was routed.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from memory_store import Loka
from memory_store.errors import LokaError, NotFound
from memory_store.ids import is_memory_id
from memory_store.types import GenerationRequest, GenerationResult
from service.api.deps import ApiAuth, EngineDep, GeneratorDep, PolicyDep, SettingsDep
from service.config import Settings
from service.errors import ServiceError, engine_status, error_body, invalid
from service.limits import (
    check_generation,
    check_min_tokens,
    check_text,
    fit_context,
    sampling_temperature,
)
from service.openai_compat import (
    DEFAULT_CHAT_TOKENS,
    DEFAULT_COMPLETION_TOKENS,
    MODELS,
    SSE_DONE,
    ChatRequest,
    CompletionRequest,
    chat_body,
    chat_chunk,
    completion_body,
    completion_chunk,
    new_id,
    now,
    render_chat,
    sse,
    usage_chunk,
)
from service.policy import Policy
from service.scheduler import Chunk, GenerationScheduler

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["openai"], dependencies=[ApiAuth])

_MODEL_CREATED = 0


def _model_not_found(model: str) -> ServiceError:
    return ServiceError(
        404, "model_not_found",
        f'the model {model[:64]!r} does not exist; use "loka" (routed), "base" or a memory id',
        field="model",
    )


def _card(model_id: str, parent: str | None = None) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": _MODEL_CREATED, "owned_by": "loka",
            "root": parent or model_id, "parent": parent}


async def _selection(model: str, engine: Loka, policy: Policy | None = None) -> str:
    """The memory selection a model name stands for (404 ``model_not_found`` if none, or if
    ``policy`` hides it; 403 if ``policy`` refuses it to the caller)."""
    if model in MODELS:
        selection = MODELS[model]
    elif is_memory_id(model):
        try:
            await run_in_threadpool(engine.memory, model)
        except NotFound as exc:
            raise _model_not_found(model) from exc
        selection = model
    else:
        raise _model_not_found(model)
    if policy is not None:
        try:
            await run_in_threadpool(policy.check_selection, selection, "model", model)
        except NotFound as exc:
            raise _model_not_found(model) from exc
    return selection


@router.get("/models")
async def list_models() -> dict[str, Any]:
    """The served models: ``loka`` (routed through the gate) and ``base`` (no memory)."""
    return {"object": "list", "data": [_card("loka"), _card("base")]}


@router.get("/models/{model}")
async def get_model(model: str, engine: EngineDep, policy: PolicyDep) -> dict[str, Any]:
    """One model: ``loka``, ``base`` or a memory id (not one hidden from the caller)."""
    if is_memory_id(model) and await run_in_threadpool(policy.is_hidden, model):
        raise _model_not_found(model)
    await _selection(model, engine)
    return _card(model, None if model in MODELS else "loka")


def _request(body: Any, prompt: str, memory: str, max_tokens: int, stops: list[str]) -> \
        GenerationRequest:
    return GenerationRequest(
        prompt=prompt,
        max_new_tokens=max_tokens,
        # 1 is OpenAI's default
        temperature=sampling_temperature(1.0 if body.temperature is None else body.temperature),
        top_p=1.0 if body.top_p is None else body.top_p,
        stop=tuple(stops),
        memory=memory,
        seed=body.seed,
        ignore_eos=bool(body.ignore_eos),
        min_tokens=body.min_tokens or 0,
    )


async def _opened(generator: GenerationScheduler, request: GenerationRequest, field: str) -> \
        AsyncIterator[Chunk]:
    """Start a stream and wait for its first chunk, so that early errors become HTTP errors."""
    stream = generator.stream(request, field)
    try:
        first: Chunk | None = await anext(stream)
    except StopAsyncIteration:
        first = None

    async def chained() -> AsyncIterator[Chunk]:
        if first is not None:
            yield first
        async for chunk in stream:
            yield chunk

    return chained()


def _error_event(exc: BaseException) -> str:
    if isinstance(exc, LokaError):
        return sse(error_body(exc.type, exc.message, code=engine_status(exc)))
    if isinstance(exc, ServiceError):
        return sse(error_body(exc.type, exc.message, code=exc.status_code))
    logger.error("stream failed: %s", exc, exc_info=exc)
    return sse(error_body("internal_error", "internal server error", code=500))


def _event_stream(events: Callable[[], AsyncIterator[str]]) -> StreamingResponse:
    async def guarded() -> AsyncIterator[str]:
        try:
            async for event in events():
                yield event
        except Exception as exc:
            yield _error_event(exc)
        yield SSE_DONE

    return StreamingResponse(
        guarded(), media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.post("/completions")
async def completions(
    body: CompletionRequest, settings: SettingsDep, engine: EngineDep, generator: GeneratorDep,
    policy: PolicyDep,
) -> Any:
    """OpenAI text completions (``prompt`` a string or a list of strings; ``n`` = 1)."""
    memory = await _selection(body.model, engine, policy)
    prompts = body.prompts()
    if len(prompts) > settings.max_prompts_per_request:
        raise invalid("prompt", f"at most {settings.max_prompts_per_request} prompts")
    fields = ["prompt"] if isinstance(body.prompt, str) else [f"prompt.{i}" for i in
                                                             range(len(prompts))]
    for field, prompt in zip(fields, prompts, strict=True):
        check_text(settings, field, prompt)
    max_tokens = body.max_tokens or DEFAULT_COMPLETION_TOKENS
    stops = body.stops()
    check_generation(settings, max_tokens, stops, "max_tokens")
    check_min_tokens(body.min_tokens or 0, max_tokens, "max_tokens")

    def prepare() -> list[GenerationRequest]:
        budgets = [
            fit_context(generator, settings, engine.context_length, p, f, body.max_tokens,
                        "max_tokens", max_tokens)
            for f, p in zip(fields, prompts, strict=True)
        ]
        for budget in budgets:  # after the context cut
            check_min_tokens(body.min_tokens or 0, budget, "max_tokens")
        served = policy.served(memory, prompts, generator)
        return [_request(body, p, m, b, stops)
                for p, m, b in zip(prompts, served, budgets, strict=True)]

    requests = await run_in_threadpool(prepare)
    id_ = new_id("cmpl")
    if not body.stream:
        results = await run_in_threadpool(policy.results, await generator.generate_many(requests))
        texts = [(p + r.text) if body.echo else r.text for p, r in zip(prompts, results,
                                                                        strict=True)]
        return JSONResponse(completion_body(id_, body.model, texts, results))

    first = await _opened(generator, requests[0], fields[0])
    include_usage = body.stream_options is not None and body.stream_options.include_usage

    async def events() -> AsyncIterator[str]:
        created, results = now(), []
        for index, request in enumerate(requests):
            stream = first if index == 0 else await _opened(generator, request, fields[index])
            if body.echo:
                yield sse(completion_chunk(id_, body.model, created, index, request.prompt))
            async for chunk in stream:
                if chunk.text:
                    yield sse(completion_chunk(id_, body.model, created, index, chunk.text))
                if chunk.result is not None:
                    result = await run_in_threadpool(policy.result, chunk.result)
                    results.append(result)
                    yield sse(completion_chunk(id_, body.model, created, index, "", result))
        if include_usage:
            yield sse(usage_chunk(id_, "text_completion", body.model, created, results))

    return _event_stream(events)


def _chat_prompt(settings: Settings, engine: Loka, body: ChatRequest) -> str:
    if len(body.messages) > settings.max_chat_messages:
        raise invalid("messages", f"at most {settings.max_chat_messages} messages")
    for i, m in enumerate(body.messages):
        check_text(settings, f"messages.{i}.content", m.text())
    prompt = render_chat(engine.tokenizer, body.messages)
    check_text(settings, "messages", prompt)
    return prompt


@router.post("/chat/completions")
async def chat_completions(
    body: ChatRequest, settings: SettingsDep, engine: EngineDep, generator: GeneratorDep,
    policy: PolicyDep,
) -> Any:
    """OpenAI chat completions; the prompt is built with the model's chat template if any."""
    memory = await _selection(body.model, engine, policy)
    prompt = await run_in_threadpool(_chat_prompt, settings, engine, body)
    asked = body.max_completion_tokens or body.max_tokens
    max_tokens = asked or min(DEFAULT_CHAT_TOKENS, settings.max_new_tokens)
    tokens_field = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
    stops = body.stops()
    check_generation(settings, max_tokens, stops, tokens_field)
    check_min_tokens(body.min_tokens or 0, max_tokens, tokens_field)

    def prepare() -> GenerationRequest:
        budget = fit_context(generator, settings, engine.context_length, prompt, "messages",
                             asked, tokens_field, max_tokens)
        check_min_tokens(body.min_tokens or 0, budget, tokens_field)  # after the context cut
        served = policy.served(memory, [prompt], generator)[0]
        return _request(body, prompt, served, budget, stops)

    request = await run_in_threadpool(prepare)
    id_ = new_id("chatcmpl")
    if not body.stream:
        result: GenerationResult = await generator.generate(request, "messages")
        result = await run_in_threadpool(policy.result, result)
        return JSONResponse(chat_body(id_, body.model, result))

    stream = await _opened(generator, request, "messages")
    include_usage = body.stream_options is not None and body.stream_options.include_usage

    async def events() -> AsyncIterator[str]:
        created, results = now(), []
        yield sse(chat_chunk(id_, body.model, created, {"role": "assistant", "content": ""}))
        async for chunk in stream:
            if chunk.text:
                yield sse(chat_chunk(id_, body.model, created, {"content": chunk.text}))
            if chunk.result is not None:
                result = await run_in_threadpool(policy.result, chunk.result)
                results.append(result)
                yield sse(chat_chunk(id_, body.model, created, {}, result))
        if include_usage:
            yield sse(usage_chunk(id_, "chat.completion.chunk", body.model, created, results))

    return _event_stream(events)
