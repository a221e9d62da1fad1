"""Jobs: progress, cancellation, serving while training, and surviving a restart.

These tests train concurrently with serving, so they get servers of their own: a failure here
cannot leave the shared server's engine in a bad state for the other modules.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import httpx
import pytest

from memory_store.models.builtin import FACTS, counterfactual_answer


def edit_body(fact: Any, steps: int | None = None, shift: int = 1) -> dict:
    body: dict = {"edits": [{"prompt": fact.prompt,
                             "target": " " + counterfactual_answer(fact, shift)}]}
    if steps is not None:
        body["options"] = {"steps": steps}
    return body


def submit(client: httpx.Client, body: dict) -> str:
    r = client.post("/v1/updates", json=body)
    assert r.status_code == 202, r.text
    return r.json()["id"]


@pytest.fixture(scope="module")
def jobs_client(start_server: Callable[..., Any]) -> Iterator[httpx.Client]:
    """A client of this module's own server."""
    with start_server().client() as c:
        yield c


def wait_status(client: httpx.Client, job_id: str, statuses: tuple[str, ...],
                timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in statuses:
            return job
        time.sleep(0.05)
    pytest.fail(f"job {job_id} never reached {statuses}")


@pytest.mark.slow
def test_cancel_queued_and_running_jobs(jobs_client: httpx.Client, known_facts: Any,
                                        wait: Callable[..., dict]) -> None:
    client = jobs_client
    v0 = client.get("/v1/codebook").json()["version"]
    fact = known_facts.spare[1] if len(known_facts.spare) > 1 else known_facts.spare[0]
    body = {"unlearn": [{"prompt": p, "target": fact.target} for p in fact.prompts],
            "options": {"steps": 300}}
    running = submit(client, body)
    queued = submit(client, edit_body(fact, steps=1, shift=2))
    job = wait_status(client, running, ("running", "succeeded", "failed"))
    assert job["status"] == "running", job
    r = client.delete(f"/v1/jobs/{queued}")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "cancelled"
    r = client.delete(f"/v1/jobs/{running}")
    if r.status_code == 409:  # it finished before the cancel arrived
        pytest.skip("the job finished before it could be cancelled")
    assert r.status_code == 202, r.text
    assert r.json()["cancel_requested"] is True
    job = wait(client, running)
    assert job["status"] == "cancelled", job
    assert job["result"] is None and job["finished_at"]
    assert client.get("/v1/codebook").json()["version"] == v0
    assert client.delete(f"/v1/jobs/{queued}").status_code == 409  # already finished
    listed = client.get("/v1/jobs", params={"status": "cancelled"}).json()["jobs"]
    assert {queued, running} <= {j["id"] for j in listed}


def read_once(c: httpx.Client, prompt: str, stream: bool) -> tuple[int, int | None]:
    """One generation (native, or streamed through the OpenAI endpoint): (status, version)."""
    if not stream:
        r = c.post("/v1/generate", json={"prompt": prompt, "max_new_tokens": 4})
        return r.status_code, r.json().get("codebook_version")
    body = {"model": "loka", "prompt": prompt, "max_tokens": 4, "stream": True}
    with c.stream("POST", "/v1/completions", json=body) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    if any("error" in e for e in events):
        return 500, None
    last = [e for e in events if e.get("choices") and "loka" in e["choices"][0]]
    return r.status_code, last[-1]["choices"][0]["loka"]["codebook_version"] if last else None


def read_while(url: str, prompt: str, stop: threading.Event, job_id: str, stream: bool) -> list:
    """Generate again and again until ``stop``: (job status before, HTTP status, version)."""
    seen: list[tuple[str, int | str, int | None]] = []
    with httpx.Client(base_url=url, timeout=120.0) as c:
        while not stop.is_set():
            status = "?"
            try:
                status = c.get(f"/v1/jobs/{job_id}").json()["status"]
                seen.append((status, *read_once(c, prompt, stream)))
            except httpx.TransportError as exc:  # the server dropped the connection
                seen.append((status, repr(exc), None))
    return seen


@pytest.mark.slow
def test_generation_is_served_while_a_job_runs(
    start_server: Callable[..., Any], known_facts: Any, wait: Callable[..., dict]
) -> None:
    # a fresh server: its first update also computes the background keys, the longest stretch
    # of engine work during which serving must go on
    server = start_server()
    client = server.client()
    prompt = known_facts.unrelated.prompt
    v0 = client.get("/v1/codebook").json()["version"]
    fact = known_facts.spare[0]
    job_id = submit(client, {
        "edits": [{"prompt": fact.prompt, "target": " " + counterfactual_answer(fact),
                   "paraphrases": list(fact.prompts[1:])}],
        "options": {"steps": 200},
    })
    stop = threading.Event()
    url = str(client.base_url)
    with ThreadPoolExecutor(3) as pool:  # keeps the server busy: serving overlaps training
        readers = [pool.submit(read_while, url, prompt, stop, job_id, stream)
                   for stream in (False, False, True)]
        job = wait(client, job_id)
        stop.set()
        seen = [r.result() for r in readers]
    assert job["status"] == "succeeded", job
    assert all(code == 200 for one in seen for _, code, _ in one), seen
    assert any(status == "running" for one in seen for status, _, _ in one)
    for one in seen:
        versions = [v for _, _, v in one]
        # each reader sees the old version, then the new one: never going back
        assert set(versions) <= {v0, v0 + 1} and versions == sorted(versions), versions
    assert client.post("/v1/generate", json={"prompt": prompt}).json()["codebook_version"] == \
        v0 + 1
    client.close()


@pytest.mark.slow
def test_jobs_survive_a_restart(start_server: Callable[..., Any]) -> None:
    """Kill the server (as a crash would) while one job runs and one waits; both run after."""
    server = start_server()
    facts = [f for f in FACTS if f.relation == "profession"][:3]
    with server.client() as client:
        long_body = {"unlearn": [{"prompt": p, "target": facts[0].target}
                                 for p in facts[0].prompts], "options": {"steps": 150}}
        running = submit(client, long_body)
        queued = submit(client, edit_body(facts[1], steps=5))
        seen = wait_status(client, running, ("running", "succeeded", "failed"))
        assert seen["status"] == "running", seen
        assert seen["progress"]["stage"]
    server.stop(signal.SIGKILL)
    restarted_at = datetime.now().astimezone()
    server.start()
    with server.client() as client:
        jobs = {j["id"]: j for j in client.get("/v1/jobs").json()["jobs"]}
        assert set(jobs) == {running, queued}
        first = wait_status(client, running, ("succeeded", "failed", "cancelled"), 300)
        second = wait_status(client, queued, ("succeeded", "failed", "cancelled"), 300)
        assert first["status"] == "succeeded", first
        assert second["status"] == "succeeded", second
        # the interrupted job was run again from the start, then the queued one (FIFO)
        started = datetime.fromisoformat(first["started_at"])
        assert started > restarted_at
        assert datetime.fromisoformat(second["started_at"]) >= started
        assert client.get("/v1/codebook").json()["version"] == 2
