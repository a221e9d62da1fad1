"""vLLM's sampling parameters ``ignore_eos`` and ``min_tokens`` over real HTTP, on the native
``/v1/generate`` and the OpenAI routes (the official client sends them in ``extra_body``)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from memory_store.models.builtin import FACTS

# the built-in model answers a fact of its corpus in a token or two, then ends with EOS
FACT = FACTS[0].prompts[0]


@pytest.fixture(scope="module")
def oai(server: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="not-needed", max_retries=0,
                         timeout=120.0)


def assert_error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    return r.json()["error"]


def generate(client: httpx.Client, **body: Any) -> dict:
    r = client.post("/v1/generate", json={"prompt": FACT, "memory": "none", **body})
    assert r.status_code == 200, r.text
    return r.json()


def test_ignore_eos_generates_exactly_max_tokens(client: httpx.Client) -> None:
    plain = generate(client, max_new_tokens=12)
    assert plain["finish_reason"] == "stop" and plain["usage"]["completion_tokens"] < 12
    forced = generate(client, max_new_tokens=12, ignore_eos=True)
    assert forced["usage"]["completion_tokens"] == 12
    assert forced["finish_reason"] == "length"
    assert forced["text"].startswith(plain["text"])


def test_min_tokens_defers_eos(client: httpx.Client) -> None:
    plain = generate(client, max_new_tokens=20)
    n = plain["usage"]["completion_tokens"]
    assert plain["finish_reason"] == "stop" and n + 4 < 20
    longer = generate(client, max_new_tokens=20, min_tokens=n + 4)
    assert longer["usage"]["completion_tokens"] >= n + 4
    assert longer["text"].startswith(plain["text"]) and len(longer["text"]) > len(plain["text"])
    # min_tokens already met: nothing changes
    assert generate(client, max_new_tokens=20, min_tokens=n) == plain


def test_min_tokens_defers_stop_strings(client: httpx.Client) -> None:
    plain = generate(client, max_new_tokens=8)
    answer = plain["text"]
    stop = answer.strip()[1:4]  # inside the answer's first tokens
    cut = generate(client, max_new_tokens=8, stop=[stop])
    assert cut["finish_reason"] == "stop" and cut["text"] == answer[:answer.index(stop)]
    n = plain["usage"]["completion_tokens"]
    kept = generate(client, max_new_tokens=8, stop=[stop], min_tokens=n + 1)
    assert kept["text"].startswith(answer)
    assert kept["usage"]["completion_tokens"] >= n + 1


def test_openai_completions_and_chat_take_them(oai: openai.OpenAI) -> None:
    c = oai.completions.create(model="base", prompt=FACT, max_tokens=10, temperature=0,
                               extra_body={"ignore_eos": True})
    assert c.usage is not None and c.usage.completion_tokens == 10
    assert c.choices[0].finish_reason == "length"
    plain = oai.completions.create(model="base", prompt=FACT, max_tokens=10, temperature=0)
    assert plain.usage is not None and plain.usage.completion_tokens < 6
    longer = oai.completions.create(model="base", prompt=FACT, max_tokens=10, temperature=0,
                                    extra_body={"min_tokens": 6})
    assert longer.usage is not None and longer.usage.completion_tokens >= 6
    chat = oai.chat.completions.create(model="base", max_tokens=9, temperature=0,
                                       messages=[{"role": "user", "content": FACT}],
                                       extra_body={"ignore_eos": True})
    assert chat.usage is not None and chat.usage.completion_tokens == 9


def test_streams_take_them(oai: openai.OpenAI) -> None:
    stream = oai.completions.create(model="base", prompt=FACT, max_tokens=11, temperature=0,
                                    stream=True, stream_options={"include_usage": True},
                                    extra_body={"ignore_eos": True})
    chunks = list(stream)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 11
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"


INVALID = [
    ("/v1/generate", {"prompt": "x", "ignore_eos": 1}, "ignore_eos"),
    ("/v1/generate", {"prompt": "x", "ignore_eos": "true"}, "ignore_eos"),
    ("/v1/generate", {"prompt": "x", "min_tokens": -1}, "min_tokens"),
    ("/v1/generate", {"prompt": "x", "min_tokens": 2.0}, "min_tokens"),
    ("/v1/generate", {"prompt": "x", "min_tokens": True}, "min_tokens"),
    ("/v1/generate", {"prompt": "x", "max_new_tokens": 4, "min_tokens": 5}, "min_tokens"),
    ("/v1/generate", {"prompt": "x", "min_tokens": 33}, "min_tokens"),  # the default is 32
    ("/v1/completions", {"model": "base", "prompt": "x", "min_tokens": 17}, "min_tokens"),
    ("/v1/completions", {"model": "base", "prompt": "x", "max_tokens": 4, "min_tokens": 5},
     "min_tokens"),
    ("/v1/completions", {"model": "base", "prompt": "x", "ignore_eos": "yes"}, "ignore_eos"),
    ("/v1/chat/completions", {"model": "base", "messages": [{"role": "user", "content": "x"}],
                              "max_completion_tokens": 2, "min_tokens": 3}, "min_tokens"),
    ("/v1/chat/completions", {"model": "base", "messages": [{"role": "user", "content": "x"}],
                              "min_tokens": "3"}, "min_tokens"),
]


@pytest.mark.parametrize(("path", "body", "field"), INVALID,
                         ids=[f"{p}:{json.dumps(b)[-40:]}" for p, b, _ in INVALID])
def test_invalid_values_are_422_naming_the_field(
    client: httpx.Client, path: str, body: dict, field: str
) -> None:
    error = assert_error(client.post(path, json=body), 422)
    assert error["field"] == field, error
