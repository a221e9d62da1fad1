"""The service's continuous batching: concurrent HTTP requests with different memories get the
same answers as each request alone, and one bad request does not fail the others."""

from __future__ import annotations

import asyncio
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
