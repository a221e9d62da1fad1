"""The HTTP surface without training: health, reads, routing, errors (422, 413, 404), metrics."""

from __future__ import annotations

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

GOOD_EDIT = {"prompt": "The capital of Veltoria is", "target": " Quarrow"}


def assert_error(r: httpx.Response, status: int, type_: str | None = None) -> dict:
    """The response is an error in the service's shape; its ``error`` object."""
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error["type"], str) and isinstance(error["message"], str), error
    if type_ is not None:
        assert error["type"] == type_, error
    return error


def test_health_and_ready(client: httpx.Client) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json() == {"status": "ok"}


def test_generate_base_and_auto(client: httpx.Client) -> None:
    body = {"prompt": "The weather today is", "max_new_tokens": 5}
    auto = client.post("/v1/generate", json=body).json()
    base = client.post("/v1/generate", json={**body, "memory": "none"}).json()
    assert set(auto) >= {"text", "memory_id", "gate", "similarity", "codebook_version", "usage"}
    assert base["memory_id"] is None
    assert 0 < auto["usage"]["completion_tokens"] <= 5
    assert auto["usage"]["prompt_tokens"] > 0
    # greedy decoding is deterministic
    assert client.post("/v1/generate", json={**body, "memory": "none"}).json()["text"] == \
        base["text"]


def test_stop_sequence_ends_text(client: httpx.Client) -> None:
    body = {"prompt": "Once upon a time there was", "max_new_tokens": 12, "memory": "none"}
    text = client.post("/v1/generate", json=body).json()["text"]
    if len(text) < 4:
        pytest.skip(f"the model's answer is too short: {text!r}")
    stop = text[2:4]
    stopped = client.post("/v1/generate", json={**body, "stop": [stop]}).json()
    assert stopped["text"] == text[: text.find(stop)]
    assert stopped["finish_reason"] == "stop"


def test_route_explains_without_generating(client: httpx.Client) -> None:
    r = client.post("/v1/route", json={"prompt": "The weather today is"})
    assert r.status_code == 200, r.text
    assert set(r.json()) == {"memory_id", "gate", "similarity", "codebook_version"}


def test_reads(client: httpx.Client) -> None:
    codebook = client.get("/v1/codebook").json()
    assert {"version", "n_memories", "n_pieces", "n_versions", "index", "model"} <= set(codebook)
    assert client.get("/v1/memories").json()["codebook_version"] >= 0
    assert isinstance(client.get("/v1/knowledge").json()["pieces"], list)
    assert isinstance(client.get("/v1/jobs").json()["jobs"], list)
    assert client.get("/v1/codebook/versions").json()["current"] == codebook["version"]
    models = client.get("/v1/models").json()
    assert [m["id"] for m in models["data"]] == ["loka", "base"]


MALFORMED = [
    ("/v1/generate", {}, "prompt"),
    ("/v1/generate", {"prompt": "   "}, "prompt"),
    ("/v1/generate", {"prompt": 3}, "prompt"),
    ("/v1/generate", {"prompt": "x", "bogus": 1}, "bogus"),
    ("/v1/generate", {"prompt": "x", "max_new_tokens": 0}, "max_new_tokens"),
    ("/v1/generate", {"prompt": "x", "max_new_tokens": 65}, "max_new_tokens"),
    ("/v1/generate", {"prompt": "x", "temperature": -1}, "temperature"),
    ("/v1/generate", {"prompt": "x", "top_p": 0}, "top_p"),
    ("/v1/generate", {"prompt": "x", "stop": "no list"}, "stop"),
    ("/v1/generate", {"prompt": "x", "memory": "../etc/passwd"}, "memory"),
    ("/v1/generate", {"prompt": "x" * 501}, "prompt"),
    ("/v1/route", {"prompt": ""}, "prompt"),
    ("/v1/updates", {}, "edits"),
    ("/v1/updates", {"edits": [], "unlearn": []}, "edits"),
    ("/v1/updates", {"edits": [{"prompt": "p"}]}, "edits.0.target"),
    ("/v1/updates", {"edits": [{**GOOD_EDIT, "paraphrases": [""]}]}, "edits.0.paraphrases.0"),
    ("/v1/updates", {"edits": [{**GOOD_EDIT, "paraphrases": ["a", "b", "c", "d", "e"]}]},
     "edits.0.paraphrases"),
    ("/v1/updates", {"edits": [GOOD_EDIT] * 7}, "edits"),
    ("/v1/updates", {"unlearn": [{"prompt": "p", "target": "t", "kind": "x"}]},
     "unlearn.0.kind"),
    ("/v1/updates", {"edits": [GOOD_EDIT], "options": {"steps": 301}}, "options.steps"),
    ("/v1/updates", {"edits": [GOOD_EDIT], "options": {"optimizer": "sgd"}},
     "options.optimizer"),
    ("/v1/updates", {"edits": [GOOD_EDIT], "options": {"unlearn_loss": "magic"}},
     "options.unlearn_loss"),
    ("/v1/updates", {"edits": [GOOD_EDIT], "retain": [{"target": "x"}]}, "retain.0.prompt"),
    ("/v1/codebook/rollback", {"version": -1}, "version"),
    ("/v1/codebook/rollback", {}, "version"),
    ("/v1/completions", {"prompt": "x"}, "model"),
    ("/v1/completions", {"model": "loka", "prompt": "x", "n": 2}, "n"),
    ("/v1/completions", {"model": "loka", "prompt": "x", "max_tokens": 65}, "max_tokens"),
    ("/v1/completions", {"model": "loka", "prompt": [1, 2, 3]}, "prompt"),
    ("/v1/chat/completions", {"model": "loka", "messages": []}, "messages"),
    ("/v1/chat/completions", {"model": "loka", "messages": [{"role": "wizard", "content": "x"}]},
     "messages.0.role"),
]


@pytest.mark.parametrize(("path", "body", "field"), MALFORMED,
                         ids=[f"{p}:{f}" for p, _, f in MALFORMED])
def test_malformed_bodies_are_422_naming_the_field(
    client: httpx.Client, path: str, body: dict, field: str
) -> None:
    error = assert_error(client.post(path, json=body), 422)
    assert error["field"] == field or error["field"].startswith(field + "."), error


def test_invalid_json_is_422(client: httpx.Client) -> None:
    r = client.post("/v1/generate", content=b'{"prompt": ', headers={
        "Content-Type": "application/json"})
    assert assert_error(r, 422, "validation_error")["field"] == "body"
    r = client.post("/v1/generate", json=["a list"])
    assert_error(r, 422, "validation_error")


def test_oversized_body_is_413(client: httpx.Client) -> None:
    big = {"prompt": "x" * (65 * 1024)}
    assert_error(client.post("/v1/generate", json=big), 413, "payload_too_large")

    def chunks():  # no Content-Length: counted while read
        for _ in range(70):
            yield b" " * 1024

    r = client.post("/v1/generate", content=chunks(), headers={
        "Content-Type": "application/json"})
    assert_error(r, 413, "payload_too_large")


@pytest.mark.parametrize("path", [
    "/v1/jobs/job_0123456789abcdef0123456789abcdef",
    "/v1/jobs/not-a-job",
    "/v1/jobs/..%2F..%2Fetc%2Fpasswd",
    "/v1/memories/mem_999999",
    "/v1/memories/mem_..",
    "/v1/knowledge/pc_999999",
    "/v1/knowledge/%2Ftmp",
    "/v1/models/gpt-4",
    "/v1/nothing-here",
])
def test_unknown_ids_are_404(client: httpx.Client, path: str) -> None:
    assert_error(client.get(path), 404)


def test_unknown_memory_for_generation_is_404(client: httpx.Client) -> None:
    r = client.post("/v1/generate", json={"prompt": "x", "memory": "mem_999999"})
    assert_error(r, 404, "not_found")
    r = client.post("/v1/completions", json={"model": "mem_999999", "prompt": "x"})
    assert_error(r, 404, "model_not_found")


def test_changes_to_unknown_things_are_404_or_409(client: httpx.Client) -> None:
    assert_error(client.delete("/v1/memories/mem_999999"), 404)
    assert_error(client.delete("/v1/knowledge/pc_999999"), 404)
    assert_error(client.delete("/v1/jobs/job_0123456789abcdef0123456789abcdef"), 404)
    assert_error(client.post("/v1/codebook/rollback", json={"version": 10_000}), 404)


def test_wrong_method_is_405(client: httpx.Client) -> None:
    assert_error(client.get("/v1/generate"), 405, "method_not_allowed")


def test_metrics(client: httpx.Client) -> None:
    client.post("/v1/generate", json={"prompt": "The weather today is", "max_new_tokens": 2})
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    for name in ("loka_http_requests_total", "loka_http_request_duration_seconds_bucket",
                 "loka_tokens_total", "loka_gate_decisions_total", "loka_jobs{",
                 "loka_codebook_memories", "loka_codebook_version", "loka_ready 1.0"):
        assert name in text, name
    # labelled by route template, never by raw path
    assert 'route="/v1/generate"' in text
    client.get("/v1/jobs/job_0123456789abcdef0123456789abcdef")
    assert 'route="/v1/jobs/{job_id}"' in client.get("/metrics").text


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner,
                                                                max_size=4),
    max_leaves=10,
)
fields = st.sampled_from(["prompt", "max_new_tokens", "temperature", "top_p", "stop", "memory",
                          "seed", "edits", "unlearn", "retain", "options", "model", "messages",
                          "version", "n", "stream"])
bodies = st.dictionaries(fields, json_values, max_size=5) | json_values


@settings(max_examples=40, deadline=None, database=None)
@given(path=st.sampled_from(["/v1/generate", "/v1/route", "/v1/updates", "/v1/completions",
                             "/v1/chat/completions"]), body=bodies)
def test_bad_input_never_500(client: httpx.Client, path: str, body: object) -> None:
    if path == "/v1/updates" and isinstance(body, dict):
        body = {**body, "options": {"steps": 0}}  # never valid: nothing may start training
    r = client.post(path, json=body)
    assert r.status_code < 500, r.text
    if r.status_code >= 400:
        assert set(r.json()) == {"error"}, r.text


def test_openapi_lists_every_endpoint(client: httpx.Client) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/health", "/ready", "/v1/generate", "/v1/route", "/v1/completions",
                 "/v1/chat/completions", "/v1/models", "/v1/updates", "/v1/jobs",
                 "/v1/jobs/{job_id}", "/v1/memories", "/v1/memories/{memory_id}",
                 "/v1/knowledge", "/v1/knowledge/{piece_id}", "/v1/codebook",
                 "/v1/codebook/rollback", "/metrics"):
        assert path in paths, path
