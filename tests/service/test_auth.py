"""Bearer tokens: the admin token guards knowledge changes, the API token generation and reads."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

ADMIN = "admin-secret-7f3a"
API = "api-secret-19c2"
EDIT = {"edits": [{"prompt": "The capital of Veltoria is", "target": " Quarrow"}],
        "options": {"steps": 1}}


@pytest.fixture(scope="module")
def secured(start_server: Callable[..., Any]) -> Any:
    """A server with both tokens set."""
    return start_server({"LOKA_ADMIN_TOKEN": ADMIN, "LOKA_API_TOKEN": API})


def call(server: Any, method: str, path: str, token: str | None = None,
         raw_header: str | None = None, **kwargs: Any) -> httpx.Response:
    headers = {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if raw_header is not None:
        headers["Authorization"] = raw_header
    return httpx.request(method, f"{server.url}{path}", headers=headers, timeout=60.0, **kwargs)


GENERATION = [
    ("POST", "/v1/generate", {"prompt": "Hello", "max_new_tokens": 2}),
    ("POST", "/v1/route", {"prompt": "Hello"}),
    ("POST", "/v1/completions", {"model": "loka", "prompt": "Hello", "max_tokens": 2}),
    ("POST", "/v1/chat/completions", {"model": "loka", "max_tokens": 2,
                                      "messages": [{"role": "user", "content": "Hi"}]}),
    ("GET", "/v1/models", None),
    ("GET", "/v1/memories", None),
    ("GET", "/v1/knowledge", None),
    ("GET", "/v1/jobs", None),
    ("GET", "/v1/codebook", None),
]
ADMIN_ONLY = [
    ("POST", "/v1/updates", {"edits": [{"prompt": "p", "target": " t"}], "bogus": 1}),
    ("DELETE", "/v1/memories/mem_000001", None),
    ("DELETE", "/v1/knowledge/pc_000001", None),
    ("DELETE", "/v1/jobs/job_0123456789abcdef0123456789abcdef", None),
    ("POST", "/v1/codebook/rollback", {"version": 0}),
]


@pytest.mark.parametrize(("method", "path", "body"), GENERATION, ids=[p for _, p, _ in GENERATION])
def test_generation_needs_the_api_token(secured: Any, method: str, path: str,
                                        body: dict | None) -> None:
    r = call(secured, method, path, json=body)
    assert r.status_code == 401, r.text
    assert r.json()["error"]["type"] == "unauthorized"
    assert r.headers["www-authenticate"] == "Bearer"
    assert call(secured, method, path, raw_header=f"Basic {API}", json=body).status_code == 401
    r = call(secured, method, path, token="wrong", json=body)
    assert r.status_code == 403 and r.json()["error"]["type"] == "forbidden", r.text
    assert call(secured, method, path, token=API, json=body).status_code == 200
    assert call(secured, method, path, token=ADMIN, json=body).status_code == 200


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_ONLY, ids=[p for _, p, _ in ADMIN_ONLY])
def test_changes_need_the_admin_token(secured: Any, method: str, path: str,
                                      body: dict | None) -> None:
    assert call(secured, method, path, json=body).status_code == 401
    assert call(secured, method, path, token="wrong", json=body).status_code == 403
    assert call(secured, method, path, token=API, json=body).status_code == 403
    # past auth: the request itself is judged (an invalid body, an unknown id...)
    r = call(secured, method, path, token=ADMIN, json=body)
    assert r.status_code not in (401, 403), r.text


def test_admin_can_queue_and_cancel(secured: Any) -> None:
    r = call(secured, "POST", "/v1/updates", token=ADMIN, json=EDIT)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    assert call(secured, "DELETE", f"/v1/jobs/{job_id}", token=API).status_code == 403
    r = call(secured, "DELETE", f"/v1/jobs/{job_id}", token=ADMIN)
    # cancelled while queued (200), asked to stop while running (202), or already done (409)
    assert r.status_code in (200, 202, 409), r.text
    # reading the job needs the API token only; let it end before the next test generates
    deadline = time.monotonic() + 120
    while call(secured, "GET", f"/v1/jobs/{job_id}", token=API).json()["status"] in (
            "queued", "running"):
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_open_endpoints(secured: Any) -> None:
    assert call(secured, "GET", "/health").status_code == 200
    assert call(secured, "GET", "/ready").status_code == 200
    assert call(secured, "GET", "/metrics").status_code == 200


def test_openai_client_uses_the_api_key(secured: Any) -> None:
    good = openai.OpenAI(base_url=f"{secured.url}/v1", api_key=API, max_retries=0)
    assert good.completions.create(model="loka", prompt="Hello", max_tokens=2).choices
    bad = openai.OpenAI(base_url=f"{secured.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.PermissionDeniedError):
        bad.completions.create(model="base", prompt="Hello", max_tokens=2)


def test_tokens_are_never_logged(secured: Any) -> None:
    call(secured, "GET", "/v1/models", token=API)
    call(secured, "GET", "/v1/models", token="wrong")
    log = secured.log_path.read_text(errors="replace")
    assert ADMIN not in log and API not in log
