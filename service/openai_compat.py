"""OpenAI-compatible shapes (as vLLM and LoRAX serve them) and the chat prompt rendering.

Models: ``"loka"`` routes through the gate, ``"base"`` is the frozen base model, and a memory id
(``"mem_000001"``) pins that memory (LoRAX's "adapter as model"). Harmless unknown fields
(``user``, penalties, ``logit_bias``...) are accepted and ignored; fields whose meaning we cannot
honour (``n`` > 1, ``logprobs``, ``best_of`` > 1, ``suffix``, ``tools``) are a 422.

Chat prompts use the tokenizer's chat template when it has one. Otherwise each message becomes
a line ``"<Role>: <content>"`` (System, User, Assistant, Tool) and the prompt ends with
``"\\nAssistant:"``, so the model continues as the assistant.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    field_validator,
)

from memory_store.models.chat import render_turns
from memory_store.types import GenerationResult
from service.errors import invalid
from service.schemas import Seed

DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default for /v1/completions
DEFAULT_CHAT_TOKENS = 128
MODELS = {"loka": "auto", "base": "none"}  # model name -> memory selection

class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: StrictBool = False


class _OpenAIRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    temperature: StrictFloat | None = Field(None, ge=0.0, le=2.0)
    top_p: StrictFloat | None = Field(None, gt=0.0, le=1.0)
    n: StrictInt | None = None
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: Seed | None = None
    # vLLM's extra sampling parameters (the openai client sends them through ``extra_body``)
    ignore_eos: StrictBool | None = None
    min_tokens: StrictInt | None = Field(None, ge=0)

    @field_validator("n")
    @classmethod
    def _one_choice(cls, value: int | None) -> int | None:
        if value is not None and value != 1:
            raise ValueError("only n=1 is supported")
        return value

    def stops(self) -> list[str]:
        """``stop`` as a list (empty strings dropped)."""
        if self.stop is None:
            return []
        stops = [self.stop] if isinstance(self.stop, str) else self.stop
        return [s for s in stops if s]


class CompletionRequest(_OpenAIRequest):
    prompt: str | list[str]
    max_tokens: StrictInt | None = Field(None, ge=1)
    echo: StrictBool | None = False
    logprobs: StrictInt | None = None
    best_of: StrictInt | None = None
    suffix: str | None = None

    @field_validator("prompt")
    @classmethod
    def _prompts(cls, value: str | list[str]) -> str | list[str]:
        prompts = [value] if isinstance(value, str) else value
        if not prompts:
            raise ValueError("at least one prompt")
        if any(not p.strip() for p in prompts):
            raise ValueError("must not be empty or blank")
        return value

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, value: int | None) -> int | None:
        if value:
            raise ValueError("logprobs are not supported")
        return value

    @field_validator("best_of")
    @classmethod
    def _no_best_of(cls, value: int | None) -> int | None:
        if value is not None and value != 1:
            raise ValueError("only best_of=1 is supported")
        return value

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, value: str | None) -> str | None:
        if value:
            raise ValueError("suffix is not supported")
        return value

    def prompts(self) -> list[str]:
        """``prompt`` as a list."""
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        """The message's text (text parts joined)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class ChatRequest(_OpenAIRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: StrictInt | None = Field(None, ge=1)
    max_completion_tokens: StrictInt | None = Field(None, ge=1)
    logprobs: StrictBool | None = None
    tools: list[Any] | None = None

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, value: bool | None) -> bool | None:
        if value:
            raise ValueError("logprobs are not supported")
        return value

    @field_validator("tools")
    @classmethod
    def _no_tools(cls, value: list[Any] | None) -> list[Any] | None:
        if value:
            raise ValueError("tools are not supported")
        return value


def render_chat(tokenizer: Any, messages: list[ChatMessage]) -> str:
    """The prompt of a conversation: the tokenizer's chat template, else "Role: text" lines."""
    turns = [{"role": m.role, "content": m.text()} for m in messages]
    try:
        return render_turns(tokenizer, turns)
    except Exception as exc:  # jinja errors: the template rejects this conversation
        raise invalid("messages", f"the model's chat template rejects them: {exc}") from exc


def new_id(prefix: str) -> str:
    """A response id such as ``cmpl-<hex>``."""
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    """Unix time in seconds (the ``created`` field)."""
    return int(time.time())


def loka_info(r: GenerationResult) -> dict[str, Any]:
    """The ``loka`` extension of a choice: where it was routed."""
    return {
        "memory_id": r.memory_id, "gate": r.gate, "similarity": r.similarity,
        "codebook_version": r.codebook_version,
    }


def usage(results: list[GenerationResult]) -> dict[str, int]:
    """The ``usage`` object of a response."""
    p = sum(r.prompt_tokens for r in results)
    c = sum(r.completion_tokens for r in results)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def completion_body(
    id_: str, model: str, texts: list[str], results: list[GenerationResult]
) -> dict[str, Any]:
    """A ``text_completion`` response."""
    return {
        "id": id_, "object": "text_completion", "created": now(), "model": model,
        "choices": [
            {"index": i, "text": t, "finish_reason": r.finish_reason, "logprobs": None,
             "loka": loka_info(r)}
            for i, (t, r) in enumerate(zip(texts, results, strict=True))
        ],
        "usage": usage(results),
    }


def chat_body(id_: str, model: str, result: GenerationResult) -> dict[str, Any]:
    """A ``chat.completion`` response."""
    return {
        "id": id_, "object": "chat.completion", "created": now(), "model": model,
        "choices": [{
            "index": 0, "message": {"role": "assistant", "content": result.text},
            "finish_reason": result.finish_reason, "logprobs": None, "loka": loka_info(result),
        }],
        "usage": usage([result]),
    }


def completion_chunk(
    id_: str, model: str, created: int, index: int, text: str,
    result: GenerationResult | None = None,
) -> dict[str, Any]:
    """One streamed ``text_completion`` chunk (the last of a choice has its finish reason)."""
    choice: dict[str, Any] = {
        "index": index, "text": text, "logprobs": None,
        "finish_reason": result.finish_reason if result is not None else None,
    }
    if result is not None:
        choice["loka"] = loka_info(result)
    return {"id": id_, "object": "text_completion", "created": created, "model": model,
            "choices": [choice]}


def chat_chunk(
    id_: str, model: str, created: int, delta: dict[str, str],
    result: GenerationResult | None = None,
) -> dict[str, Any]:
    """One streamed ``chat.completion.chunk``."""
    choice: dict[str, Any] = {
        "index": 0, "delta": delta, "logprobs": None,
        "finish_reason": result.finish_reason if result is not None else None,
    }
    if result is not None:
        choice["loka"] = loka_info(result)
    return {"id": id_, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [choice]}


def usage_chunk(
    id_: str, object_: str, model: str, created: int, results: list[GenerationResult]
) -> dict[str, Any]:
    """The final chunk of ``stream_options.include_usage``: no choices, the usage."""
    return {"id": id_, "object": object_, "created": created, "model": model, "choices": [],
            "usage": usage(results)}


def sse(data: dict[str, Any] | str) -> str:
    """One server-sent event."""
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {payload}\n\n"


SSE_DONE = sse("[DONE]")
