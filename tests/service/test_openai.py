"""The official ``openai`` client against the OpenAI-compatible endpoints (plain and streaming)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from transformers import AutoTokenizer

PROMPT = "The weather today is"


@pytest.fixture(scope="module")
def oai(server: Any) -> openai.OpenAI:
    """The official client on the shared server (``server`` is conftest's ``LokaServer``)."""
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="not-needed", max_retries=0,
                         timeout=120.0)


def base_text(client: httpx.Client, prompt: str, n: int) -> str:
    r = client.post("/v1/generate", json={"prompt": prompt, "max_new_tokens": n,
                                          "memory": "none"})
    assert r.status_code == 200, r.text
    return r.json()["text"]


def test_models(oai: openai.OpenAI) -> None:
    assert {m.id for m in oai.models.list()} == {"loka", "base"}
    assert oai.models.retrieve("base").id == "base"


def test_completion_matches_native_generation(oai: openai.OpenAI, client: httpx.Client) -> None:
    c = oai.completions.create(model="base", prompt=PROMPT, max_tokens=6, temperature=0)
    assert c.object == "text_completion"
    assert c.model == "base"
    assert len(c.choices) == 1 and c.choices[0].index == 0
    assert c.choices[0].finish_reason in ("stop", "length")
    assert c.choices[0].text == base_text(client, PROMPT, 6)
    assert c.usage is not None
    assert c.usage.total_tokens == c.usage.prompt_tokens + c.usage.completion_tokens


def test_completion_list_of_prompts_and_echo(oai: openai.OpenAI) -> None:
    c = oai.completions.create(model="loka", prompt=[PROMPT, "My favourite food is"],
                               max_tokens=3, temperature=0, echo=True)
    assert [ch.index for ch in c.choices] == [0, 1]
    assert c.choices[0].text.startswith(PROMPT)
    assert c.choices[1].text.startswith("My favourite food is")


def test_completion_stream(oai: openai.OpenAI) -> None:
    plain = oai.completions.create(model="base", prompt=PROMPT, max_tokens=8, temperature=0)
    stream = oai.completions.create(model="base", prompt=PROMPT, max_tokens=8, temperature=0,
                                    stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(ch.choices[0].text for ch in chunks if ch.choices)
    assert text == plain.choices[0].text
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices]
    assert finishes[-1] in ("stop", "length") and not any(finishes[:-1])
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens


def test_chat(oai: openai.OpenAI, client: httpx.Client, default_model: Path) -> None:
    messages = [{"role": "user", "content": PROMPT}]
    r = oai.chat.completions.create(model="base", messages=messages, max_tokens=6,
                                    temperature=0)
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert isinstance(r.choices[0].message.content, str)
    assert r.choices[0].finish_reason in ("stop", "length")
    if AutoTokenizer.from_pretrained(default_model).chat_template is None:
        # the documented fallback rendering
        assert r.choices[0].message.content == base_text(client, f"User: {PROMPT}\nAssistant:", 6)


def test_chat_stream(oai: openai.OpenAI) -> None:
    messages = [{"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": PROMPT}]
    plain = oai.chat.completions.create(model="loka", messages=messages, max_tokens=8,
                                        temperature=0)
    chunks = list(oai.chat.completions.create(model="loka", messages=messages, max_tokens=8,
                                              temperature=0, stream=True))
    assert all(ch.object == "chat.completion.chunk" for ch in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks)
    assert text == plain.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_sampling_with_seed_is_reproducible(oai: openai.OpenAI) -> None:
    kwargs = {"model": "base", "prompt": PROMPT, "max_tokens": 8, "temperature": 1.0,
              "seed": 1234}
    assert oai.completions.create(**kwargs).choices[0].text == \
        oai.completions.create(**kwargs).choices[0].text


def test_client_errors(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        oai.completions.create(model="gpt-4", prompt=PROMPT, max_tokens=2)
    with pytest.raises(openai.UnprocessableEntityError):
        oai.completions.create(model="loka", prompt=PROMPT, max_tokens=2, n=2)
    with pytest.raises(openai.UnprocessableEntityError):
        oai.chat.completions.create(model="loka", messages=[], max_tokens=2)
