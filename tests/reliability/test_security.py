"""Security: what an unlearning request asks to forget never leaks to non-admin callers, nor to
the log, nor stays in the jobs table; tokens are compared in constant time, never logged, never
echoed; odd Authorization headers are refused cleanly.

(Which endpoint needs which token is covered by ``tests/service/test_auth.py``.)
"""

from __future__ import annotations

import hmac
import socket
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from harness import ADMIN, API, LokaServer, accepted, job_rows, wait_job
from pydantic import SecretStr
from starlette.requests import Request

from memory_store.codebook.store import Store
from memory_store.models.builtin import counterfactual_answer, find_fact
from service.api import deps
from service.config import Settings
from service.errors import ServiceError
from service.jobs import JobQueue

pytestmark = pytest.mark.slow

EDIT = find_fact("Veltoria", "capital")
FORGET = find_fact("Quellan", "sport")  # its answer is what must not leak


@dataclass
class Secured:
    server: LokaServer
    job_id: str
    unlearn_piece: str
    edit_piece: str
    memory_id: str


@pytest.fixture(scope="module")
def secured(make_server: Callable[..., LokaServer]) -> Iterator[Secured]:
    """A server with both tokens (debug logging) after one update: an edit and an unlearning
    request, trained into one memory."""
    server = make_server({"LOKA_ADMIN_TOKEN": ADMIN, "LOKA_API_TOKEN": API,
                          "LOKA_LOG_LEVEL": "debug"})
    server.start()
    with server.client(ADMIN) as admin:
        body = {"edits": [{"prompt": EDIT.prompt, "target": " " + counterfactual_answer(EDIT)}],
                "unlearn": [{"prompt": FORGET.prompt, "target": " " + FORGET.answer,
                             "paraphrases": [FORGET.prompts[1]]}],
                "options": {"steps": 20}}
        job = wait_job(admin, accepted(admin.post("/v1/updates", json=body)))
        assert job["status"] == "succeeded", job
        pieces = {p["kind"]: p["id"] for p in admin.get("/v1/knowledge").json()["pieces"]}
        memory = admin.get(f"/v1/knowledge/{pieces['unlearn']}").json()["memory_id"]
    yield Secured(server, job["id"], pieces["unlearn"], pieces["edit"], memory)
    server.stop()


def get(secured: Secured, path: str, token: str | None, **params: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(f"{secured.server.url}{path}", headers=headers, params=params, timeout=60)


def test_unlearn_pieces_are_hidden_from_api_callers(secured: Secured) -> None:
    """Nothing of an unlearning request (prompt, target, paraphrases) is shown to API callers;
    its memory (here mixed with the edit) is hidden too (``service.policy``)."""
    listed = get(secured, "/v1/knowledge", API).json()["pieces"]
    assert [(p["kind"], p["memory_id"]) for p in listed] == [("edit", None)]
    assert listed[0]["target"] == " " + counterfactual_answer(EDIT)
    assert get(secured, f"/v1/knowledge/{secured.unlearn_piece}", API).status_code == 404
    assert get(secured, "/v1/knowledge", API, kind="unlearn").json()["pieces"] == []
    assert get(secured, f"/v1/memories/{secured.memory_id}", API).status_code == 404
    assert get(secured, "/v1/memories", API).json()["memories"] == []
    for path in ("/v1/knowledge", f"/v1/knowledge/{secured.unlearn_piece}", "/v1/memories"):
        text = get(secured, path, API).text
        assert FORGET.prompt not in text and FORGET.prompts[1] not in text, path


def test_admin_sees_unlearn_targets(secured: Secured) -> None:
    one = get(secured, f"/v1/knowledge/{secured.unlearn_piece}", ADMIN).json()
    assert one["target"] == " " + FORGET.answer and not one["target_redacted"]
    memory = get(secured, f"/v1/memories/{secured.memory_id}", ADMIN).json()
    assert " " + FORGET.answer in [p["target"] for p in memory["pieces"]]


@pytest.mark.parametrize("token", [API, "wrong-token", None], ids=["api", "wrong", "none"])
def test_no_read_endpoint_leaks_the_unlearn_target(secured: Secured, token: str | None) -> None:
    paths = ["/v1/knowledge", f"/v1/knowledge/{secured.unlearn_piece}", "/v1/memories",
             f"/v1/memories/{secured.memory_id}", "/v1/jobs", f"/v1/jobs/{secured.job_id}",
             "/v1/codebook", "/v1/codebook/versions", "/v1/models", "/metrics", "/openapi.json"]
    for path in paths:
        r = get(secured, path, token)
        assert FORGET.answer not in r.text, path
        if token != API and path not in ("/metrics", "/openapi.json"):
            assert r.status_code in (401, 403), (path, r.status_code)


def test_the_finished_job_keeps_no_prompt_nor_target(secured: Secured) -> None:
    row = job_rows(secured.server.db_path)[secured.job_id]
    assert row["payload"] == {"n_pieces": 2, "n_retain": 0, "scrubbed": True}


def test_neither_tokens_nor_unlearn_targets_are_logged(secured: Secured) -> None:
    get(secured, "/v1/knowledge", API)
    get(secured, "/v1/knowledge", ADMIN)
    get(secured, "/v1/knowledge", "wrong-" + ADMIN)
    log = secured.server.log()
    assert "DEBUG" in log  # the most verbose level the service offers
    assert ADMIN not in log and API not in log
    assert FORGET.answer not in log


@pytest.mark.parametrize("header", [
    b"Bearer \xff\xfe\xfd",  # latin-1 bytes that are not UTF-8
    b"Bearer " + b"a" * 8000,
    b"Bearer ",
    b"Bearer",
    b"bearer " + API.encode(),  # the scheme is case-insensitive
    b"Basic " + API.encode(),
    b"Bearer " + API.encode() + b"\x00",
    b"Bearer  " + API.encode() + b"  ",
])
def test_odd_authorization_headers(secured: Secured, header: bytes) -> None:
    # a raw socket: HTTP clients refuse to send some of these headers
    with socket.create_connection(("127.0.0.1", secured.server.port), timeout=30) as sock:
        sock.sendall(b"GET /v1/codebook HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                     b"Authorization: " + header + b"\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status = int(answer.split(b" ", 2)[1])
    assert status in (200, 400, 401, 403), answer[:300]
    if status == 200:  # only a well-formed header with the right token
        assert header.split()[-1] == API.encode()
    else:
        assert API.encode() not in answer and ADMIN.encode() not in answer


def _request(token: str | None) -> Request:
    headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
    return Request({"type": "http", "method": "GET", "path": "/", "headers": headers})


def test_tokens_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    compare = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return compare(a, b)

    monkeypatch.setattr(deps.hmac, "compare_digest", spy)
    settings = Settings(admin_token=SecretStr(ADMIN), api_token=SecretStr(API))
    deps.require_admin(_request(ADMIN), settings)
    deps.require_api(_request(API), settings)
    assert deps.caller_is_admin(_request(ADMIN), settings)
    assert not deps.caller_is_admin(_request(API), settings)
    with pytest.raises(ServiceError) as refused:
        deps.require_admin(_request(API), settings)
    assert refused.value.status_code == 403
    # every decision went through hmac.compare_digest, never ==
    assert len(calls) == 5 and all(isinstance(a, bytes) for a, _ in calls)


def test_without_an_admin_token_every_caller_is_admin() -> None:
    """No admin token configured: knowledge changes are open, so nothing is hidden either."""
    assert deps.caller_is_admin(_request(None), Settings())
    assert deps.caller_is_admin(_request(None), Settings(api_token=SecretStr(API)))


def test_payloads_of_old_finished_jobs_are_scrubbed_at_start(tmp_path: Path) -> None:
    """Rows finished before payloads were scrubbed (an older version) lose their targets when
    the queue starts; queued jobs keep theirs (they still need them)."""
    store = Store(tmp_path)
    db = store.db_path
    secret = {"pieces": [{"kind": "unlearn", "prompt": "p", "target": " hush", "paraphrases": []}],
              "retain": [], "options": {}}
    queue = JobQueue(store, engine=None)  # never started: no worker
    done, waiting = queue.submit("update", secret).id, queue.submit("update", secret).id
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE service_jobs SET status='succeeded' WHERE id=?", (done,))
    queue._recover()
    assert queue.get(done).payload == {"n_pieces": 1, "n_retain": 0, "scrubbed": True}
    assert queue.get(waiting).payload == secret
    queue.stop()
    store.close()
