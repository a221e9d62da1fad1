"""``loka-client`` as a subprocess against the real server (see ``conftest.live_server``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from harness import LokaServer

from memory_store.models.builtin.corpus import FACTS

pytestmark = pytest.mark.slow


def _run(server: LokaServer, *args: str, env_tokens: bool = True) -> subprocess.CompletedProcess:
    """Run ``python -m loka_client ARGS`` with the server's address (and tokens) in the env."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOKA_")}
    env["LOKA_URL"] = server.url
    if env_tokens:  # an operator: the admin token for everything (see conftest's ``client``)
        env["LOKA_API_TOKEN"] = server.admin_token
        env["LOKA_ADMIN_TOKEN"] = server.admin_token
    return subprocess.run(
        [sys.executable, "-m", "loka_client", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_generate_prints_json(live_server: LokaServer) -> None:
    fact = FACTS[5]
    out = _run(live_server, "generate", fact.prompt, "--memory", "none", "--max-new-tokens", "4")
    assert out.returncode == 0, out.stderr
    body = json.loads(out.stdout)
    assert isinstance(body["text"], str) and body["memory_id"] is None
    assert body["usage"]["completion_tokens"] <= 4


def test_reads_print_json(live_server: LokaServer) -> None:
    for command in ("codebook", "memories", "knowledge", "versions", "jobs"):
        out = _run(live_server, command)
        assert out.returncode == 0, f"{command}: {out.stderr}"
        json.loads(out.stdout)
    assert "version" in json.loads(_run(live_server, "codebook").stdout)


def test_errors_go_to_stderr_with_exit_1(live_server: LokaServer) -> None:
    out = _run(live_server, "memory", "mem_999999")
    assert out.returncode == 1 and out.stdout == ""
    assert "404" in out.stderr and "not_found" in out.stderr
    no_token = _run(live_server, "generate", "Hello", env_tokens=False)
    assert no_token.returncode == 1 and "401" in no_token.stderr
    flag = _run(live_server, "--token", "wrong", "codebook", env_tokens=False)
    assert flag.returncode == 1 and "403" in flag.stderr


def test_update_file_with_a_bad_line(live_server: LokaServer, tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    good = {"kind": "edit", "prompt": FACTS[7].prompt, "target": " Hollisk"}
    bad = {"kind": "edit", "prompt": FACTS[8].prompt, "paraphrases": ["x"]}  # no target
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    n_jobs = len(json.loads(_run(live_server, "jobs").stdout))
    out = _run(live_server, "update", "--file", str(path))
    assert out.returncode == 2 and out.stdout == ""
    assert f"{path}:2: field 'target'" in out.stderr
    assert len(json.loads(_run(live_server, "jobs").stdout)) == n_jobs  # nothing was submitted


def test_update_file_and_wait(live_server: LokaServer, tmp_path: Path) -> None:
    fact = FACTS[100]
    other = next(f for f in FACTS if f.relation == fact.relation and f.answer != fact.answer)
    path = tmp_path / "edit.jsonl"
    lines = [
        {"kind": "edit", "prompt": fact.prompt, "target": " " + other.answer},
        {"kind": "retain", "prompt": FACTS[-2].prompt, "target": FACTS[-2].target},
    ]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    out = _run(live_server, "update", "--file", str(path), "--options", '{"steps": 10}', "--wait")
    assert out.returncode == 0, out.stderr
    job = json.loads(out.stdout)
    assert job["status"] == "succeeded" and job["result"]["pieces_added"]
    assert out.stderr  # the progress display
    again = _run(live_server, "job", job["id"], "--wait")
    assert again.returncode == 0 and json.loads(again.stdout)["id"] == job["id"]
