"""Consistency under concurrency: while jobs publish new versions (and a rollback publishes
another), concurrent generation requests never fail and each one is served by exactly one
codebook version, the one its response reports.

Greedy decoding is deterministic, so every version has one answer per prompt: a reference taken
while that version is current, when no change is running. Every answer the readers got under a
version must equal that version's reference; an answer computed with part of one version and
part of another (the old index with the new adapters, say) would differ from both.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from harness import LokaServer, accepted, wait_job

from memory_store.models.builtin import counterfactual_answer, find_fact

pytestmark = pytest.mark.slow

FACT = find_fact("Veltoria", "capital")
PROMPTS = (FACT.prompts[0], FACT.prompts[1], "The weather today is")
NEW_ANSWERS = tuple(" " + counterfactual_answer(FACT, shift) for shift in (1, 2))


def generate(client: httpx.Client, prompt: str, stream: bool) -> tuple[int, str, int | None]:
    """One greedy generation: (HTTP status, text, codebook version)."""
    if not stream:
        r = client.post("/v1/generate", json={"prompt": prompt, "max_new_tokens": 4})
        body = r.json()
        return r.status_code, body.get("text", r.text), body.get("codebook_version")
    text, version, status = "", None, 0
    request = {"model": "loka", "prompt": prompt, "max_tokens": 4, "temperature": 0,
               "stream": True}
    with client.stream("POST", "/v1/completions", json=request) as r:
        status = r.status_code
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            if "error" in event:
                return 500, json.dumps(event), None
            choice = event["choices"][0]
            text += choice.get("text", "")
            if "loka" in choice:
                version = choice["loka"]["codebook_version"]
    return status, text, version


def read_until(url: str, stop: threading.Event, stream: bool) -> list[tuple[str, int, str, int]]:
    """Generate the prompts round-robin until ``stop``: (prompt, status, text, version)."""
    seen = []
    with httpx.Client(base_url=url, timeout=60.0) as client:
        while not stop.is_set():
            for prompt in PROMPTS:
                try:
                    seen.append((prompt, *generate(client, prompt, stream)))
                except httpx.HTTPError as exc:
                    seen.append((prompt, 0, repr(exc), -1))
    return seen


def references(client: httpx.Client, expect: int = 0) -> tuple[int, dict[str, str]]:
    """The current version and its answer to every prompt (nothing is being published).
    A job is marked done in the transaction that publishes its version and the server switches
    to that version right after, so wait until it serves at least ``expect``."""
    deadline = time.monotonic() + 30.0
    version = client.get("/v1/codebook").json()["version"]
    while version < expect and time.monotonic() < deadline:
        time.sleep(0.05)
        version = client.get("/v1/codebook").json()["version"]
    assert version >= expect, (version, expect)
    answers = {}
    for prompt in PROMPTS:
        _, text, seen_version = generate(client, prompt, stream=False)
        assert seen_version == version
        answers[prompt] = text
    return version, answers


def test_each_response_is_one_published_version(make_server: Callable[..., LokaServer]) -> None:
    server = make_server({"LOKA_BATCH_WAIT_MS": "5"})
    server.start()
    refs: dict[int, dict[str, str]] = {}
    stop = threading.Event()
    with server.client() as client, ThreadPoolExecutor(4) as pool:
        version, refs[0] = references(client)
        assert version == 0
        readers = [pool.submit(read_until, server.url, stop, stream)
                   for stream in (False, False, False, True)]
        try:  # the readers stop even when a change fails (else the pool never ends)
            time.sleep(0.5)  # the readers are running before the first change
            for answer in NEW_ANSWERS:  # two edits of one fact: versions 1 and 2
                body = {"edits": [{"prompt": FACT.prompts[0], "target": answer,
                                   "paraphrases": [FACT.prompts[1]]}],
                        "options": {"steps": 60}}
                job = wait_job(client, accepted(client.post("/v1/updates", json=body)))
                assert job["status"] == "succeeded", job
                published = job["result"]["codebook_version"]
                version, refs[published] = references(client, published)
                time.sleep(0.5)
            rolled = wait_job(client, accepted(client.post("/v1/codebook/rollback",
                                                            json={"version": 1})))  # version 3 = 1
            assert rolled["status"] == "succeeded", rolled
            published = rolled["result"]["codebook_version"]
            version, refs[published] = references(client, published)
            time.sleep(0.5)
        finally:
            stop.set()
        seen = [r.result() for r in readers]
    server.stop()

    assert sorted(refs) == [0, 1, 2, 3]
    # the edits took: the versions answer differently, and the rollback restored version 1
    assert NEW_ANSWERS[0] in refs[1][FACT.prompts[0]] and NEW_ANSWERS[1] in refs[2][
        FACT.prompts[0]]
    assert refs[3] == refs[1]
    assert refs[0][FACT.prompts[0]] != refs[1][FACT.prompts[0]]
    failures = [s for one in seen for s in one if s[1] != 200]
    assert not failures, failures[:5]
    for one in seen:
        versions = [v for _, _, _, v in one]
        assert versions == sorted(versions), "a reader went back to an older version"
        for prompt, _, text, v in one:
            assert v in refs, f"version {v} was never published"
            assert text == refs[v][prompt], (prompt, v, text, refs[v][prompt])
    by_version = {v for one in seen for *_, v in one}
    assert len(by_version) >= 3, f"the readers saw too few versions to test much: {by_version}"
