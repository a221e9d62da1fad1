"""Bad input against a running server: a bounded, seeded schemathesis run over the whole OpenAPI
schema (``scripts/fuzz.py``), every explicit limit (413/422 with a message that names the field
and the limit), adversarial ids and texts. Nothing may answer 5xx or hang, and the server must
still serve afterwards with nothing in its log that a bad request caused.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from harness import ADMIN, API, REPO_ROOT, LokaServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memory_store.ids import is_memory_id, is_piece_id

pytestmark = pytest.mark.slow

LIMITS = {
    "LOKA_MAX_BODY_BYTES": str(64 * 1024),
    "LOKA_MAX_PROMPT_CHARS": "500",
    "LOKA_MAX_PROMPT_TOKENS": "64",
    "LOKA_MAX_NEW_TOKENS": "32",  # the default of /v1/generate
    "LOKA_MAX_PARAPHRASES": "4",
    "LOKA_MAX_PIECES_PER_UPDATE": "6",
    "LOKA_MAX_RETAIN": "8",
    "LOKA_MAX_TRAIN_STEPS": "20",
    "LOKA_MAX_PROMPTS_PER_REQUEST": "4",
}
# examples per operation and mode of the bounded run (scripts/fuzz.py runs longer ones)
FUZZ_EXAMPLES = int(os.environ.get("LOKA_FUZZ_EXAMPLES", "8"))
HANG_S = 20.0


@pytest.fixture(scope="module")
def server(make_server: Callable[..., LokaServer]) -> Iterator[LokaServer]:
    server = make_server({**LIMITS, "LOKA_ADMIN_TOKEN": ADMIN, "LOKA_API_TOKEN": API})
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def admin(server: LokaServer) -> Iterator[httpx.Client]:
    with server.client(ADMIN, timeout=HANG_S) as client:
        yield client


def assert_error(r: httpx.Response, status: int, field: str | None = None,
                 *words: str) -> dict:
    """An error in the service's shape, naming ``field`` and containing ``words``."""
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    if field is not None:
        assert error.get("field") == field, error
    for word in words:
        assert word in error["message"], error
    return error


def test_bounded_seeded_fuzz_of_the_openapi_schema(server: LokaServer, tmp_path: Path) -> None:
    if importlib.util.find_spec("schemathesis") is None:
        pytest.fail("schemathesis is not installed: pip install -e '.[dev]'")
    out = tmp_path / "fuzz"
    done = subprocess.run(
        [sys.executable, "scripts/fuzz.py", "--url", server.url, "--examples",
         str(FUZZ_EXAMPLES), "--seed", "0", "--timeout-s", str(HANG_S), "--budget-s", "120",
         "--out", str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "LOKA_ADMIN_TOKEN": ADMIN, "LOKA_API_TOKEN": API},
    )
    assert out.with_suffix(".json").is_file(), done.stderr[-3000:]
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["findings"] == [], json.dumps(report["findings"][:5], indent=1)
    assert done.returncode == 0, done.stderr[-3000:]
    assert report["server_errors_5xx"] == 0 and report["hangs"] == 0
    assert report["transport_errors"] == 0 and report["error_shape_violations"] == 0
    assert report["alive_after"]
    assert len(report["operations"]) >= 20
    assert report["requests"] >= 10 * len(report["operations"]) // 2
    assert {200, 401, 403, 404, 422} <= {int(s) for s in report["by_status"]}
    assert ADMIN not in out.with_suffix(".json").read_text()  # tokens never in the report


TOKENS = "x " * 80  # 160 characters, under the 500-character limit; 80+ tokens, over 64
LIMIT_CASES = [
    # (method, path, body, status, field, words in the message)
    ("POST", "/v1/generate", {"prompt": TOKENS}, 422, "prompt", ("at most 64", "tokens")),
    ("POST", "/v1/route", {"prompt": TOKENS}, 422, "prompt", ("at most 64", "tokens")),
    ("POST", "/v1/completions", {"model": "loka", "prompt": TOKENS}, 422, "prompt",
     ("at most 64", "tokens")),
    # the token count of a list's member names the member
    ("POST", "/v1/completions", {"model": "loka", "prompt": ["a", TOKENS]}, 422, "prompt.1",
     ("at most 64", "tokens")),
    ("POST", "/v1/completions", {"model": "loka", "prompt": TOKENS, "stream": True}, 422,
     "prompt", ("at most 64", "tokens")),
    ("POST", "/v1/chat/completions", {"model": "loka", "messages": [
        {"role": "user", "content": TOKENS}]}, 422, "messages", ("at most 64", "tokens")),
    ("POST", "/v1/generate", {"prompt": "x" * 501}, 422, "prompt", ("at most 500 characters",)),
    ("POST", "/v1/generate", {"prompt": "Hi", "max_new_tokens": 33}, 422, "max_new_tokens",
     ("at most 32", "got 33")),
    ("POST", "/v1/completions", {"model": "loka", "prompt": "Hi", "max_tokens": 33}, 422,
     "max_tokens", ("at most 32",)),
    ("POST", "/v1/chat/completions", {"model": "loka", "max_completion_tokens": 33,
                                      "messages": [{"role": "user", "content": "Hi"}]},
     422, "max_completion_tokens", ("at most 32",)),
    ("POST", "/v1/completions", {"model": "loka", "prompt": ["a"] * 5}, 422, "prompt",
     ("at most 4 prompts",)),
    ("POST", "/v1/updates", {"edits": [{"prompt": f"p{i}", "target": " t"} for i in range(7)]},
     422, "edits", ("at most 6", "per update", "got 7")),
    ("POST", "/v1/updates", {"edits": [{"prompt": f"p{i}", "target": " t"} for i in range(4)],
                             "unlearn": [{"prompt": f"q{i}", "target": " t"} for i in range(3)]},
     422, "edits", ("at most 6", "got 7")),
    ("POST", "/v1/updates", {"unlearn": [{"prompt": "p", "target": " t",
                                          "paraphrases": ["a", "b", "c", "d", "e"]}]},
     422, "unlearn.0.paraphrases", ("at most 4 paraphrases",)),
    ("POST", "/v1/updates", {"edits": [{"prompt": "p", "target": " t"}],
                             "retain": [{"prompt": f"r{i}"} for i in range(9)]},
     422, "retain", ("at most 8 retain",)),
    ("POST", "/v1/updates", {"edits": [{"prompt": "p", "target": " t"}],
                             "options": {"steps": 21}}, 422, "options.steps", ("at most 20",)),
    ("POST", "/v1/updates", {"edits": [{"prompt": "p", "target": "t" * 2001}]}, 422,
     "edits.0.target", ("at most 2000 characters",)),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "field", "words"), LIMIT_CASES,
                         ids=[f"{c[1]}:{c[4]}" for c in LIMIT_CASES])
def test_limits_answer_422_naming_the_field_and_the_limit(
    admin: httpx.Client, method: str, path: str, body: dict, status: int, field: str,
    words: tuple[str, ...],
) -> None:
    assert_error(admin.request(method, path, json=body), status, field, *words)


def test_body_size_limit_is_413_with_the_limit_in_the_message(admin: httpx.Client) -> None:
    big = {"prompt": "x" * (65 * 1024)}
    for path in ("/v1/generate", "/v1/updates", "/v1/chat/completions"):
        assert_error(admin.post(path, json=big), 413, None, "65536 bytes")

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while it is read
        for _ in range(70):
            yield b" " * 1024

    r = admin.post("/v1/updates", content=chunks(), headers={"Content-Type": "application/json"})
    assert_error(r, 413, None, "65536 bytes")
    # a declared terabyte is refused before a byte of it is read
    port = admin.base_url.port
    with socket.create_connection(("127.0.0.1", port), timeout=HANG_S) as sock:
        sock.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 1000000000000\r\n"
                     b"Authorization: Bearer " + ADMIN.encode() + b"\r\n\r\n")
        head = sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 413"), head[:200]


# ids a caller may send: traversal, huge or negative numbers, lookalike digits, control and
# format characters, very long strings, and anything unicode
ID_PREFIXES = st.sampled_from(["", "mem_", "pc_", "job_", "../", "..%2F", "%2e%2e/", "/", "mem_-",
                               "mem_0x", "pc_../"])
ID_BODIES = st.one_of(
    st.text(min_size=0, max_size=40),
    st.integers(min_value=-(10**40), max_value=10**400).map(str),
    st.sampled_from(["../../etc/passwd", "..\\..\\windows", "%00", "\x00", "\n", "000001\n",
                     "000001\x00", "٠٠٠٠٠١", "²³", "０００００１", "000001/../000002",
                     "9" * 5000, "a" * 4000, "\u202e100000", "\ufeff000001", "1e309", "NaN"]),
)
ID_ENDPOINTS = ["GET /v1/jobs/{}", "DELETE /v1/jobs/{}", "GET /v1/memories/{}",
                "DELETE /v1/memories/{}", "GET /v1/knowledge/{}", "DELETE /v1/knowledge/{}",
                "GET /v1/models/{}"]


@settings(max_examples=120, deadline=None, database=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(endpoint=st.sampled_from(ID_ENDPOINTS), prefix=ID_PREFIXES, body=ID_BODIES,
       encode=st.booleans())
def test_adversarial_ids_are_rejected(admin: httpx.Client, endpoint: str, prefix: str,
                                      body: str, encode: bool) -> None:
    raw = prefix + body
    if raw in ("loka", "base"):  # the two model names that exist
        return
    method, template = endpoint.split(" ")
    # percent-encoded, or as typed (only where that still makes a URL httpx will send)
    ident = quote(raw, safe="") if encode or not raw.isprintable() else quote(raw, safe="/%")
    r = admin.request(method, template.format(ident))
    # 307: "/v1/jobs/" is redirected to "/v1/jobs"; never a success, never a 5xx
    assert r.status_code in (307, 404, 405, 422), (raw, r.status_code, r.text[:300])
    if r.status_code != 307:
        assert set(r.json()) == {"error"}


@settings(max_examples=60, deadline=None, database=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(value=ID_PREFIXES.flatmap(lambda p: ID_BODIES.map(lambda b: p + b)))
def test_adversarial_ids_in_bodies_and_queries(admin: httpx.Client, value: str) -> None:
    if value in ("auto", "none", "loka", "base"):
        return
    r = admin.post("/v1/generate", json={"prompt": "Hi", "max_new_tokens": 1, "memory": value})
    assert r.status_code in (404, 422), r.text[:300]
    r = admin.post("/v1/completions", json={"model": value, "prompt": "Hi", "max_tokens": 1})
    assert r.status_code in (404, 422), r.text[:300]
    r = admin.get("/v1/knowledge", params={"memory_id": value})
    assert r.status_code in (200, 422), r.text[:300]
    if r.status_code == 200:  # a well-formed id that names nothing
        assert is_memory_id(value) and r.json()["pieces"] == []


@pytest.mark.parametrize("version", [10**30, 2**63, -1, -(2**63), 1.5, "1e309", None, [1]])
def test_huge_and_malformed_version_numbers(admin: httpx.Client, version: object) -> None:
    r = admin.post("/v1/codebook/rollback", json={"version": version})
    assert r.status_code in (404, 409, 422), r.text


def test_ids_with_a_trailing_newline_are_not_ids() -> None:
    # re.match with "$" accepts "mem_000001\n": ids are checked with fullmatch
    assert not is_memory_id("mem_000001\n") and not is_piece_id("pc_000001\n")
    assert is_memory_id("mem_000001") and is_piece_id("pc_000001")


# texts a tokenizer may choke on: lone surrogates (valid JSON escapes), NUL, BOM, bidi
# controls, combining marks, private use, emoji and noncharacters
NASTY_TEXT = st.text(
    alphabet=st.characters(codec=None, exclude_categories=()), min_size=1, max_size=60
) | st.sampled_from(["\ud800", "a\udfffb", "\x00", "\ufeff", "\u202e\u202d", "e\u0301" * 30,
                     "\U0010ffff", "\ufffe\uffff", "🦜" * 20, "\r\n\t", " "])
TEXT_BODIES = [
    ("/v1/generate", lambda t: {"prompt": t, "max_new_tokens": 2}, 200),
    ("/v1/generate", lambda t: {"prompt": "Hi", "stop": [t], "max_new_tokens": 2}, 200),
    ("/v1/route", lambda t: {"prompt": t}, 200),
    ("/v1/completions", lambda t: {"model": "base", "prompt": t, "max_tokens": 2}, 200),
    ("/v1/completions", lambda t: {"model": "base", "prompt": t, "max_tokens": 2,
                                   "stream": True}, 200),
    ("/v1/chat/completions", lambda t: {"model": "base", "max_tokens": 2,
                                        "messages": [{"role": "user", "content": t}]}, 200),
    # options.steps 0 is never valid: nothing may start training
    ("/v1/updates", lambda t: {"unlearn": [{"prompt": t, "target": t}],
                               "options": {"steps": 0}}, 422),
]


@settings(max_examples=80, deadline=None, database=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(case=st.sampled_from(range(len(TEXT_BODIES))), text=NASTY_TEXT)
def test_adversarial_texts_never_500_nor_hang(admin: httpx.Client, case: int, text: str) -> None:
    path, body, best = TEXT_BODIES[case]
    # ensure_ascii writes a lone surrogate as the JSON escape "\ud800", as a client could
    payload = json.dumps(body(text), ensure_ascii=True).encode()
    r = admin.post(path, content=payload, headers={"Content-Type": "application/json"})
    assert r.status_code in (best, 422), (text, r.status_code, r.text[:300])
    if r.status_code == 422:
        assert set(r.json()) == {"error"}
    elif path == "/v1/completions" and body(text).get("stream"):
        assert "internal_error" not in r.text


def test_lone_surrogates_are_422_naming_the_field(admin: httpx.Client) -> None:
    """A lone surrogate used to kill the generation worker thread: every generation after it
    waited forever."""
    for path, body, field in [
        ("/v1/generate", b'{"prompt": "Hi \\ud800", "max_new_tokens": 2}', "prompt"),
        ("/v1/route", b'{"prompt": "\\udfff"}', "prompt"),
        ("/v1/completions", b'{"model": "loka", "prompt": ["a", "\\ud800"]}', "prompt.1"),
        ("/v1/chat/completions",
         b'{"model": "loka", "messages": [{"role": "user", "content": "\\ud800"}]}',
         "messages.0.content"),
        ("/v1/updates", b'{"edits": [{"prompt": "p", "target": " \\ud800"}]}',
         "edits.0.target"),
    ]:
        r = admin.post(path, content=body, headers={"Content-Type": "application/json"})
        assert_error(r, 422, field, "not valid Unicode")
    r = admin.post("/v1/generate", json={"prompt": "Hi", "max_new_tokens": 2})
    assert r.status_code == 200, r.text


def test_the_server_is_unharmed(server: LokaServer, admin: httpx.Client) -> None:
    """Runs last: still ready and generating; no traceback and no token in the log."""
    assert admin.get("/ready").status_code == 200
    r = admin.post("/v1/generate", json={"prompt": "The capital of Veltoria is",
                                         "max_new_tokens": 4})
    assert r.status_code == 200, r.text
    log = server.log()
    assert "Traceback" not in log, server.log_tail(80)
    assert ADMIN not in log and API not in log
