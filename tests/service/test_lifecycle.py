"""Start-up: 503 until the engine serves, exit statuses of ``python -m service``."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from service.config import Settings
from service.main import create_app

REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def broken_server(tmp_path: Path) -> Iterator[str]:
    """A real uvicorn server (in a thread) whose model cannot load."""
    port = free_port()
    app = create_app(Settings(model=str(tmp_path / "no-such-model"), store_dir=tmp_path / "s",
                              port=port))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while app.state.service.load_error is None or not server.started:
        assert time.monotonic() < deadline, "the load never failed"
        time.sleep(0.05)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(30)


def test_everything_is_503_until_the_engine_serves(broken_server: str) -> None:
    for method, path in (("GET", "/health"), ("GET", "/ready"), ("GET", "/v1/codebook"),
                         ("POST", "/v1/generate")):
        r = httpx.request(method, broken_server + path, json={"prompt": "Hi"})
        assert r.status_code == 503, r.text
        error = r.json()["error"]
        assert error["type"] == "load_failed"
        assert "no-such-model" in error["message"]
    metrics = httpx.get(broken_server + "/metrics")
    assert metrics.status_code == 200
    assert "loka_ready 0.0" in metrics.text


def run_service(env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "service"], cwd=REPO_ROOT, env={**os.environ, **env},
        capture_output=True, text=True, timeout=timeout,
    )


def test_exit_status_when_the_model_cannot_load(tmp_path: Path) -> None:
    done = run_service({"LOKA_MODEL": str(tmp_path / "missing"), "LOKA_PORT": str(free_port()),
                        "LOKA_STORE_DIR": str(tmp_path / "store")})
    assert done.returncode == 1, done.stderr[-3000:]
    assert "failed to load" in done.stderr


def test_exit_status_on_invalid_settings(tmp_path: Path) -> None:
    done = run_service({"LOKA_PORT": "not-a-port", "LOKA_STORE_DIR": str(tmp_path)})
    assert done.returncode == 2
    assert "port" in done.stderr
    done = run_service({"LOKA_ADMIN_TOKEN": "tok-Zq81", "LOKA_API_TOKEN": "tok-Zq81",
                        "LOKA_STORE_DIR": str(tmp_path)})
    assert done.returncode == 2
    assert "api_token" in done.stderr
    assert "tok-Zq81" not in done.stderr  # secrets never reach the log
