"""Real LOKA Serve processes for the HTTP tests: started, stopped, SIGKILLed, restarted.

The one harness of the service, client and reliability tests. Every server is
``python -m service`` on a free port of 127.0.0.1 with the built-in default model (pinned
through ``LOKA_MODEL`` by the ``make_server`` fixture of ``tests/conftest.py``) and a fresh
store in a temporary directory. A server's ``env`` may change between restarts (``LOKA_FAULT``
arms a crash point of the store's publish). Also: polling jobs and reading a store's SQLite
file while the server is down.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.embedded import free_port, wait_ready

REPO_ROOT = Path(__file__).resolve().parents[1]
# the first run of all builds the default model
READY_TIMEOUT_S = float(os.environ.get("LOKA_TEST_READY_TIMEOUT", "600"))
JOB_TIMEOUT_S = 300.0
FINISHED = ("succeeded", "failed", "cancelled")
ADMIN = "rel-admin-9b1e52"
API = "rel-api-44c0d7"


@dataclass
class LokaServer:
    """One ``python -m service`` process on a store; can be killed and started again."""

    store_dir: Path
    log_path: Path
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    starts: int = 0
    # the command after ``python``: the server by default, ``["-m", "service.worker"]`` for a
    # worker (no HTTP: ``start`` then waits for ``ready_log`` in its output instead of /ready)
    argv: list[str] = field(default_factory=lambda: ["-m", "service"])
    ready_log: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def db_path(self) -> Path:
        return self.store_dir / "loka.sqlite"

    @property
    def api_token(self) -> str | None:
        return self.env.get("LOKA_API_TOKEN")

    @property
    def admin_token(self) -> str | None:
        return self.env.get("LOKA_ADMIN_TOKEN")

    def log(self) -> str:
        """The server's whole output so far (every start)."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, n: int = 60) -> str:
        """The last ``n`` lines of the output (for failure messages)."""
        return "\n".join(self.log().splitlines()[-n:]) or "<no log>"

    def launch(self) -> None:
        """Start the process without waiting for it."""
        env = {**os.environ, **self.env, "LOKA_STORE_DIR": str(self.store_dir),
               "LOKA_HOST": "127.0.0.1", "LOKA_PORT": str(self.port)}
        env = {k: v for k, v in env.items() if v is not None}
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"\n===== start {self.starts} =====\n".encode())
            log.flush()
            self.proc = subprocess.Popen([sys.executable, *self.argv], cwd=REPO_ROOT,
                                         env=env, stdout=log, stderr=subprocess.STDOUT)

    def start(self) -> None:
        """Launch the process and wait until ``/ready`` answers 200 (or, for a process without
        HTTP, until its output matches ``ready_log``)."""
        since = len(self.log())
        self.launch()
        proc = self.proc
        assert proc is not None
        if self.ready_log is not None:
            self.wait_log(self.ready_log, READY_TIMEOUT_S, since)
            return

        def failed() -> str | None:
            code = proc.poll()
            return None if code is None else f"server exited with {code}"

        try:
            wait_ready(self.url, failed, READY_TIMEOUT_S)
        except RuntimeError as exc:
            pytest.fail(f"{exc}:\n{self.log_tail()}")

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        """Send ``sig`` (SIGKILL is a crash) and wait for the process to end."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout=10)

    def kill(self) -> None:
        """SIGKILL: no handler, no flush, no shutdown hook runs."""
        assert self.stop(signal.SIGKILL) == -signal.SIGKILL

    def wait_log(self, pattern: str, timeout: float = 60.0, since: int = 0) -> re.Match:
        """Wait until the output (from offset ``since``) matches ``pattern``; the match."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(pattern, self.log()[since:])
            if found:
                return found
            if self.proc is not None and self.proc.poll() is not None:
                break
            time.sleep(0.05)
        pytest.fail(f"{pattern!r} never appeared in the server log:\n{self.log_tail()}")

    def client(self, token: str | None = None, timeout: float = 120.0) -> httpx.Client:
        """An HTTP client of this server (with a bearer token if given)."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, timeout=timeout, headers=headers)


def wait_job(client: httpx.Client, job_id: str, timeout: float = JOB_TIMEOUT_S) -> dict:
    """Poll ``GET /v1/jobs/{id}`` until the job has finished; its last state."""
    return wait_status(client, job_id, FINISHED, timeout)


def wait_status(client: httpx.Client, job_id: str, statuses: tuple[str, ...],
                timeout: float = JOB_TIMEOUT_S, until: Callable[[dict], bool] | None = None
                ) -> dict:
    """Poll a job until its status is one of ``statuses`` (and ``until(job)`` holds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = client.get(f"/v1/jobs/{job_id}")
        assert r.status_code == 200, r.text
        job = r.json()
        if job["status"] in statuses and (until is None or until(job)):
            return job
        time.sleep(0.05)
    pytest.fail(f"job {job_id} never reached {statuses}")


def accepted(r: httpx.Response) -> str:
    """The id of a job the server accepted (the response must be a 202)."""
    assert r.status_code == 202, r.text
    assert r.headers["location"] == f"/v1/jobs/{r.json()['id']}"
    return r.json()["id"]


def read_db(db_path: Path, query: str, params: tuple[Any, ...] = ()) -> list[dict]:
    """Rows of a query on a store's SQLite file, read-only (the server may be down)."""
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute(query, params).fetchall()]
    finally:
        db.close()


def job_rows(db_path: Path) -> dict[str, dict]:
    """Every row of ``service_jobs`` by job id (payload and result decoded)."""
    rows = read_db(db_path, "SELECT * FROM service_jobs ORDER BY seq")
    for row in rows:
        row["payload"] = json.loads(row["payload"])
        row["result"] = json.loads(row["result"]) if row["result"] else None
    return {r["id"]: r for r in rows}
