"""Bad input as a new user would send it, over real HTTP, with the default request limits.

The built-in model attends to 128 positions: a prompt plus ``max_new_tokens`` beyond that is a
422 naming the field on every generation route (and the keep-alive connection still serves the
next request), an update too long to train on is a 422 before any job is queued, a body that is
not UTF-8 or nested too deeply names ``body``, numbers and booleans are strict, and a body
shorter than its ``Content-Length`` is answered (408) instead of holding the connection.
"""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Callable, Iterator

import httpx
import openai
import pytest
from harness import ADMIN, API, LokaServer

pytestmark = pytest.mark.slow

CONTEXT = 128  # positions of the built-in model
PROMPT = "The capital of Veltoria is"
LONG = "word " * 200  # far more than 128 tokens, well under the 4000-character limit
CLIENT_TIMEOUT_S = 15.0


@pytest.fixture(scope="module")
def server(make_server: Callable[..., LokaServer]) -> Iterator[LokaServer]:
    server = make_server({"LOKA_ADMIN_TOKEN": ADMIN, "LOKA_API_TOKEN": API,
                          "LOKA_BODY_TIMEOUT_S": "2"})
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def admin(server: LokaServer) -> Iterator[httpx.Client]:
    with server.client(ADMIN, timeout=120.0) as client:
        yield client


def assert_error(r: httpx.Response, status: int, field: str, *words: str) -> None:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error.get("field") == field, error
    for word in words:
        assert word in error["message"], error


# -- the context window ----------------------------------------------------------------------

TOO_LONG = [
    ("/v1/generate", {"prompt": PROMPT, "max_new_tokens": 200}, "max_new_tokens"),
    ("/v1/generate", {"prompt": LONG, "max_new_tokens": 4}, "prompt"),
    ("/v1/completions", {"model": "loka", "prompt": PROMPT, "max_tokens": 200}, "max_tokens"),
    ("/v1/completions", {"model": "loka", "prompt": PROMPT, "max_tokens": 200, "stream": True},
     "max_tokens"),
    ("/v1/completions", {"model": "loka", "prompt": ["Hi", LONG], "max_tokens": 2}, "prompt.1"),
    ("/v1/chat/completions", {"model": "loka", "max_tokens": 200,
                              "messages": [{"role": "user", "content": PROMPT}]}, "max_tokens"),
    ("/v1/chat/completions", {"model": "loka", "max_completion_tokens": 200, "stream": True,
                              "messages": [{"role": "user", "content": PROMPT}]},
     "max_completion_tokens"),
    ("/v1/chat/completions", {"model": "loka", "max_tokens": 2,
                              "messages": [{"role": "user", "content": LONG}]}, "messages"),
    ("/v1/route", {"prompt": LONG}, "prompt"),
]


@pytest.mark.parametrize(("path", "body", "field"), TOO_LONG,
                         ids=[f"{p}:{f}:{b.get('stream', False)}" for p, b, f in TOO_LONG])
def test_beyond_the_context_is_422_and_the_connection_serves_on(
    server: LokaServer, path: str, body: dict, field: str
) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {API}"}
    try:
        conn.request("POST", path, body=json.dumps(body), headers=headers)
        r = conn.getresponse()
        error = json.loads(r.read())["error"]
        assert r.status == 422, error
        assert error["field"] == field and str(CONTEXT) in error["message"], error
        assert not r.will_close
        sock = conn.sock
        conn.request("POST", "/v1/generate", headers=headers,
                     body=json.dumps({"prompt": PROMPT, "max_new_tokens": 2}))
        r = conn.getresponse()
        assert r.status == 200, r.read()
        r.read()
        assert conn.sock is sock  # the same keep-alive connection
    finally:
        conn.close()


def test_default_budgets_are_cut_to_the_context(admin: httpx.Client, server: LokaServer) -> None:
    """Unasked, the chat default (128 tokens) and the native one (32) shrink to what is left
    of the context after a long prompt (~100 tokens)."""
    messages = [{"role": "user", "content": "word " * 30}]
    r = admin.post("/v1/chat/completions", json={"model": "loka", "messages": messages})
    assert r.status_code == 200, r.text
    usage = r.json()["usage"]
    assert usage["prompt_tokens"] > 90 and usage["total_tokens"] <= CONTEXT, usage
    c = openai.OpenAI(base_url=f"{server.url}/v1", api_key=API, max_retries=0)
    chunks = list(c.chat.completions.create(model="loka", messages=messages, stream=True))
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    r = admin.post("/v1/generate", json={"prompt": "word " * 35})
    assert r.status_code == 200, r.text
    usage = r.json()["usage"]
    assert usage["prompt_tokens"] > 100 and usage["prompt_tokens"] + usage[
        "completion_tokens"] <= CONTEXT, usage


def test_openai_client_sees_the_field(server: LokaServer) -> None:
    c = openai.OpenAI(base_url=f"{server.url}/v1", api_key=API, max_retries=0)
    with pytest.raises(openai.UnprocessableEntityError) as exc:
        c.completions.create(model="loka", prompt=PROMPT, max_tokens=500, stream=True)
    assert exc.value.body["field"] == "max_tokens"


# -- updates too long to train on --------------------------------------------------------------

TOO_LONG_UPDATES = [
    ({"edits": [{"prompt": LONG, "target": " x"}]}, "edits.0.prompt"),
    ({"edits": [{"prompt": "p", "target": " " + LONG}]}, "edits.0.target"),
    ({"edits": [{"prompt": "p", "target": " x"}],
      "unlearn": [{"prompt": "q", "target": " y", "paraphrases": ["ok", LONG]}]},
     "unlearn.0.paraphrases.1"),
    ({"edits": [{"prompt": "p", "target": " x"}], "retain": [{"prompt": LONG}]},
     "retain.0.prompt"),
]


@pytest.mark.parametrize(("body", "field"), TOO_LONG_UPDATES,
                         ids=[f for _, f in TOO_LONG_UPDATES])
def test_updates_too_long_for_the_context_are_422_before_a_job(
    admin: httpx.Client, body: dict, field: str
) -> None:
    before = admin.get("/v1/jobs").json()["jobs"]
    r = admin.post("/v1/updates", json={**body, "options": {"steps": 1}})
    assert_error(r, 422, field, str(CONTEXT), field)
    assert admin.get("/v1/jobs").json()["jobs"] == before


# -- bodies ----------------------------------------------------------------------------------


def test_invalid_utf8_names_the_body(admin: httpx.Client) -> None:
    r = admin.post("/v1/generate", content=b'{"prompt": "caf\xe9 \xff"}',
                   headers={"Content-Type": "application/json"})
    assert_error(r, 400, "body", "UTF-8")
    assert admin.post("/v1/generate", json={"prompt": PROMPT, "max_new_tokens": 2}).is_success


@pytest.mark.parametrize("opener", ["[", '{"a":'])
def test_deep_json_names_the_body(admin: httpx.Client, opener: str) -> None:
    closer = "]" if opener == "[" else "}"
    depth = 100_000
    body = (opener * depth + "1" + closer * depth).encode()
    for path in ("/v1/generate", "/v1/updates", "/v1/chat/completions"):
        r = admin.post(path, content=body, headers={"Content-Type": "application/json"})
        assert_error(r, 400, "body", "nested too deeply")


STRICT = [
    ("/v1/generate", {"prompt": PROMPT, "max_new_tokens": True}, "max_new_tokens"),
    ("/v1/generate", {"prompt": PROMPT, "max_new_tokens": 2.0}, "max_new_tokens"),
    ("/v1/generate", {"prompt": PROMPT, "temperature": True}, "temperature"),
    ("/v1/generate", {"prompt": PROMPT, "seed": "7"}, "seed"),
    ("/v1/completions", {"model": "loka", "prompt": PROMPT, "stream": "yes"}, "stream"),
    ("/v1/completions", {"model": "loka", "prompt": PROMPT, "max_tokens": True}, "max_tokens"),
    ("/v1/completions", {"model": "loka", "prompt": PROMPT, "echo": 1}, "echo"),
    ("/v1/chat/completions", {"model": "loka", "stream": "yes",
                              "messages": [{"role": "user", "content": "Hi"}]}, "stream"),
    ("/v1/chat/completions", {"model": "loka", "max_tokens": True,
                              "messages": [{"role": "user", "content": "Hi"}]}, "max_tokens"),
    ("/v1/updates", {"edits": [{"prompt": "p", "target": " t"}], "options": {"steps": True}},
     "options.steps"),
    ("/v1/codebook/rollback", {"version": False}, "version"),
]


@pytest.mark.parametrize(("path", "body", "field"), STRICT,
                         ids=[f"{p}:{f}" for p, _, f in STRICT])
def test_numbers_and_booleans_are_strict(admin: httpx.Client, path: str, body: dict,
                                         field: str) -> None:
    assert_error(admin.post(path, json=body), 422, field)


def test_a_body_shorter_than_its_content_length_is_answered(server: LokaServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=CLIENT_TIMEOUT_S) as s:
        s.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                  b"Content-Type: application/json\r\nContent-Length: 100\r\n"
                  b"Authorization: Bearer " + API.encode() + b"\r\n\r\n" + b'{"prompt": "Hi"')
        reply = b""
        while chunk := s.recv(4096):  # the server closes the connection after its answer
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), head
    assert json.loads(body)["error"]["field"] == "body"


def test_the_server_is_unharmed(server: LokaServer, admin: httpx.Client) -> None:
    """Runs last: still generating; no traceback in the log."""
    r = admin.post("/v1/generate", json={"prompt": PROMPT, "max_new_tokens": 4})
    assert r.status_code == 200, r.text
    assert "Traceback" not in server.log(), server.log_tail(80)
