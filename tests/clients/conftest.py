"""A real LOKA Serve server for the client tests: ``python -m service`` on a free local port.

The server runs the built-in default model (built and cached on the first run, which can take a
few minutes) with a fresh store in a temporary directory and both tokens set.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from loka_client import Client

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
ADMIN_TOKEN = "test-admin-token"
API_TOKEN = "test-api-token"
# the first run builds the default model (again whenever its builder changes)
READY_TIMEOUT_S = float(os.environ.get("LOKA_TEST_READY_TIMEOUT", "330"))


@dataclass(frozen=True)
class LiveServer:
    """Address, tokens and log of the server under test."""

    url: str
    api_token: str
    admin_token: str
    log_path: Path

    def log_tail(self, n: int = 60) -> str:
        """The last ``n`` lines of the server's output (for failure messages)."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "<no log>"
        return "\n".join(lines[-n:])


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(proc: subprocess.Popen, server: LiveServer) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode} before ready:\n{server.log_tail()}")
        try:
            if httpx.get(f"{server.url}/ready", timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    pytest.fail(f"server not ready after {READY_TIMEOUT_S:g}s:\n{server.log_tail()}")


@pytest.fixture(scope="package")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """Launch ``python -m service`` with a temporary store; stop it after the package's tests."""
    root = tmp_path_factory.mktemp("loka-serve")
    port = free_port()
    server = LiveServer(
        url=f"http://127.0.0.1:{port}",
        api_token=API_TOKEN,
        admin_token=ADMIN_TOKEN,
        log_path=root / "server.log",
    )
    env = {
        **os.environ,
        "LOKA_STORE_DIR": str(root / "store"),
        "LOKA_HOST": "127.0.0.1",
        "LOKA_PORT": str(port),
        "LOKA_ADMIN_TOKEN": ADMIN_TOKEN,
        "LOKA_API_TOKEN": API_TOKEN,
    }
    env.pop("LOKA_MODEL", None)  # the built-in default model
    with server.log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service"],
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_ready(proc, server)
        logger.info("server ready at %s (log: %s)", server.url, server.log_path)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="package")
def client(live_server: LiveServer) -> Iterator[Client]:
    """An operator's sync client: the admin token for everything (the server's default policy
    lets only admin callers ask for the base model or a memory and see how prompts were
    routed; the API token is tried on its own in ``test_client_live``)."""
    with Client(
        live_server.url,
        api_token=live_server.admin_token,
        admin_token=live_server.admin_token,
        timeout=120.0,
    ) as c:
        yield c
