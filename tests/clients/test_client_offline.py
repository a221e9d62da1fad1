"""Client pieces that need no server: error mapping, request building, update files."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import httpx
import pytest
from loka_client import (
    BadRequest,
    Client,
    ConnectionFailed,
    Forbidden,
    Job,
    LokaClientError,
    NotFound,
    PayloadTooLarge,
    ServerError,
    ServiceUnavailable,
    Unauthorized,
    ValidationError,
    _calls,
)
from loka_client.cli import InputFileError, main, read_update_file
from loka_client.errors import error_from_response


def free_port() -> int:
    """A local TCP port nothing listens on (connections to it are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _error(status: int, body: object) -> LokaClientError:
    request = httpx.Request("GET", "http://loka.test/v1/x")
    if isinstance(body, str):
        return error_from_response(httpx.Response(status, text=body, request=request))
    return error_from_response(httpx.Response(status, json=body, request=request))


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, BadRequest),
        (401, Unauthorized),
        (403, Forbidden),
        (404, NotFound),
        (413, PayloadTooLarge),
        (422, ValidationError),
        (500, ServerError),
        (503, ServiceUnavailable),
    ],
)
def test_status_maps_to_exception(status: int, cls: type[LokaClientError]) -> None:
    err = _error(status, {"error": {"type": "t", "message": "m", "field": "edits.0.prompt"}})
    assert type(err) is cls
    assert (err.status_code, err.type, err.message) == (status, "t", "m")
    assert err.field == "edits.0.prompt"
    assert "edits.0.prompt" in str(err)


def test_service_unavailable_is_a_server_error() -> None:
    assert isinstance(_error(503, {"error": {"type": "not_ready", "message": "x"}}), ServerError)


def test_non_standard_error_bodies() -> None:
    plain = _error(502, "bad gateway")
    assert isinstance(plain, ServerError) and plain.message == "bad gateway"
    detail = _error(422, {"detail": [{"loc": ["body", "prompt"], "msg": "required"}]})
    assert isinstance(detail, ValidationError) and detail.field == "prompt"
    other = _error(418, {"error": {"type": "teapot", "message": "no"}})
    assert type(other) is LokaClientError and other.type == "teapot"


def test_tokens_per_call() -> None:
    both = _calls.Auth("api", "admin")
    assert both.headers(admin=False) == {"Authorization": "Bearer api"}
    assert both.headers(admin=True) == {"Authorization": "Bearer admin"}
    only_admin = _calls.Auth(None, "admin")
    assert only_admin.headers(admin=False) == {"Authorization": "Bearer admin"}
    assert _calls.Auth(None, None).headers(admin=True) == {}


def test_update_body_accepts_models_and_dicts() -> None:
    call = _calls.update(
        [{"prompt": "p", "target": " t", "paraphrases": ["q"]}],
        [{"prompt": "u", "target": " v"}],
        [{"prompt": "r"}],
        {"steps": 5},
    )
    assert (call.method, call.path, call.admin) == ("POST", "/v1/updates", True)
    assert call.json == {
        "edits": [{"prompt": "p", "target": " t", "paraphrases": ["q"]}],
        "unlearn": [{"prompt": "u", "target": " v"}],
        "retain": [{"prompt": "r", "target": ""}],
        "options": {"steps": 5},
    }
    assert not _calls.memories().admin and _calls.cancel_job("j").admin
    assert _calls.job("a/b").path == "/v1/jobs/a%2Fb"  # ids cannot escape their path segment


def test_bad_update_item_is_rejected_before_sending() -> None:
    with pytest.raises(ValidationError) as info:
        _calls.update([{"prompt": "p", "target": " t"}, {"prompt": "p"}], [], [], None)
    assert info.value.field == "edits.1.target"
    assert info.value.status_code is None


def test_job_model_ignores_unknown_fields() -> None:
    job = Job.model_validate(
        {
            "id": "job_1",
            "status": "succeeded",
            "progress": {"stage": "train", "step": 3, "total": 3},
            "result": {"codebook_version": 2, "memories_created": ["mem_1"]},
            "created_at": "2025-01-01T00:00:00Z",
            "something_new": {"x": 1},
        }
    )
    assert job.done and job.result is not None and job.result.memories_updated == []


def test_connection_failure_is_typed() -> None:
    with (
        Client(f"http://127.0.0.1:{free_port()}", timeout=2.0) as client,
        pytest.raises(ConnectionFailed) as info,
    ):
        client.health()
    assert info.value.status_code is None


def test_update_file_reports_every_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "facts.jsonl"
    lines = [
        json.dumps({"kind": "edit", "prompt": "A is", "target": " B", "paraphrases": ["A:"]}),
        json.dumps({"kind": "edit", "prompt": "C is"}),
        "",
        json.dumps({"kind": "forget", "prompt": "D is", "target": " E"}),
        "{not json",
        json.dumps({"kind": "unlearn", "prompt": "  ", "target": " F"}),
    ]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputFileError) as info:
        read_update_file(path)
    found = {(line, field) for line, field, _ in info.value.problems}
    assert found == {(2, "target"), (4, "kind"), (5, None), (6, "prompt")}
    assert f"{path}:2: field 'target'" in str(info.value)


def test_update_file_groups_kinds(tmp_path: Path) -> None:
    path = tmp_path / "ok.jsonl"
    records = [
        {"kind": "edit", "prompt": "A is", "target": " B"},
        {"kind": "unlearn", "prompt": "C is", "target": " D"},
        {"kind": "retain", "prompt": "E is"},
    ]
    path.write_text("# comment\n" + "\n".join(json.dumps(r) for r in records))
    batch = read_update_file(path)
    assert [len(batch.edits), len(batch.unlearn), len(batch.retain)] == [1, 1, 1]


def test_cli_bad_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"kind": "edit", "target": " x"}) + "\n")
    assert main(["--url", "http://127.0.0.1:9", "update", "--file", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:1: field 'prompt'" in err
    assert main(["update", "--file", str(tmp_path / "missing.jsonl")]) == 2
