"""The service's continuous batching: concurrent HTTP requests with different memories get the
same answers as each request alone, and one bad request does not fail the others."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import httpx
import pytest

from service.config import Settings
from service.embedded import Service, running_service

from .conftest import Codebook

KEYS = ("text", "memory_id", "finish_reason", "usage", "codebook_version")


@pytest.fixture(scope="module")
def service(codebook: Codebook) -> Iterator[Service]:
    # a long wait for company, so that the first wave surely batches
    settings = Settings(model=str(codebook.model), store_dir=codebook.store,
                        batch_wait_ms=200, max_batch_size=16, log_level="warning")
    with running_service(settings) as svc:
        yield svc


def _bodies(cb: Codebook) -> list[dict]:
    bodies = []
    for i, prompt in enumerate(cb.prompts + cb.other_prompts):
        memory = ["auto", cb.memories[(i * 5) % len(cb.memories)], "none"][i % 3]
        bodies.append({"prompt": prompt, "max_new_tokens": 2 + (i * 5) % 20, "memory": memory,
                       "stop": [" in"] if i % 4 == 1 else []})
    return bodies


async def _waves(url: str, waves: list[list[dict]]) -> list[httpx.Response]:
    """Each wave's requests at once; the next wave while the earlier ones decode."""
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        tasks = []
        for wave in waves:
            tasks += [asyncio.create_task(client.post("/v1/generate", json=b)) for b in wave]
            await asyncio.sleep(0.05)
        return list(await asyncio.gather(*tasks))


def test_concurrent_requests_equal_each_alone(codebook: Codebook, service: Service) -> None:
    bodies = _bodies(codebook)
    stats = service.state.engine.generator.stats
    before = stats.copy()
    together = asyncio.run(_waves(service.url, [bodies[:8], bodies[8:11], bodies[11:]]))
    assert stats.decode_rows - before.decode_rows > stats.decode_steps - before.decode_steps
    with httpx.Client(base_url=service.url, timeout=120) as client:
        for body, got in zip(bodies, together, strict=True):
            alone = client.post("/v1/generate", json=body)
            assert got.status_code == alone.status_code == 200, got.text
            assert {k: got.json()[k] for k in KEYS} == {k: alone.json()[k] for k in KEYS}
    memories = {r.json()["memory_id"] for r in together}
    assert None in memories and len(memories) > 4


def test_a_bad_request_fails_alone(codebook: Codebook, service: Service) -> None:
    bodies = _bodies(codebook)[:4]
    bad = {"prompt": codebook.prompts[0], "memory": "mem_999999"}
    responses = asyncio.run(_waves(service.url, [bodies[:2] + [bad] + bodies[2:]]))
    assert [r.status_code for r in responses] == [200, 200, 404, 200, 200]


def _metric(url: str, sample: str) -> float:
    """The value of one sample of ``/metrics`` (0 when absent)."""
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def _stream_and_plain(url: str, stream_body: dict, plain_body: dict) -> tuple[str, dict]:
    """A streamed completion and a plain request at once: the stream's text, the answer."""
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        async def stream() -> str:
            text = ""
            async with client.stream("POST", "/v1/completions", json=stream_body) as r:
                assert r.status_code == 200
                async for line in r.aiter_lines():
                    if line.startswith("data: {"):
                        text += json.loads(line[6:])["choices"][0]["text"]
            return text

        text, plain = await asyncio.gather(stream(), client.post("/v1/generate",
                                                                  json=plain_body))
        assert plain.status_code == 200, plain.text
        return text, plain.json()


MIXED = 'loka_decode_steps_total{rows="mixed"}'


def test_a_stream_and_a_plain_request_decode_in_one_batch(codebook: Codebook,
                                                          service: Service) -> None:
    """A streamed request is a row of the running batch: it and a plain request with another
    memory are decoded in the same steps, and each gets what it gets alone."""
    stream_body = {"model": codebook.memories[0], "prompt": codebook.prompts[0],
                   "max_tokens": 12, "temperature": 0, "stream": True, "ignore_eos": True}
    plain_body = {"prompt": codebook.prompts[1], "memory": "auto", "max_new_tokens": 12,
                  "ignore_eos": True}
    before = _metric(service.url, MIXED)
    text, plain = asyncio.run(_stream_and_plain(service.url, stream_body, plain_body))
    assert _metric(service.url, MIXED) - before >= 6  # both joined within the batch wait
    with httpx.Client(base_url=service.url, timeout=120) as client:
        alone = client.post("/v1/completions", json={**stream_body, "stream": False}).json()
        assert text == alone["choices"][0]["text"]
        assert alone["usage"]["completion_tokens"] == 12
        assert plain == client.post("/v1/generate", json=plain_body).json()
    assert plain["memory_id"] == codebook.memories[1]


def test_a_stream_whose_client_goes_away_leaves_the_batch(codebook: Codebook,
                                                          service: Service) -> None:
    cancelled = "loka_streams_cancelled_total"
    finished = 'loka_generation_duration_seconds_count{stream="true"}'
    before = (_metric(service.url, cancelled), _metric(service.url, finished))
    body = {"model": "base", "prompt": codebook.prompts[2], "max_tokens": 100,
            "temperature": 0, "stream": True, "ignore_eos": True}
    with httpx.Client(base_url=service.url, timeout=120) as client, \
            client.stream("POST", "/v1/completions", json=body) as r:
        assert r.status_code == 200
        for line in r.iter_lines():  # the first text, then the client goes away
            if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["text"]:
                break
    for _ in range(600):  # the row leaves at the next step (the wait only bounds the test)
        if _metric(service.url, cancelled) > before[0]:
            break
        time.sleep(0.1)
    assert _metric(service.url, cancelled) == before[0] + 1
    assert _metric(service.url, finished) == before[1]  # it never finished its 100 tokens
