"""Real LOKA Serve servers for the service tests: ``python -m service`` on free local ports.

Every server runs the built-in default model on a fresh store in a temporary directory.
``ensure_default_model()`` builds the model once and caches it; its directory is passed as
``LOKA_MODEL`` so that a rebuild during the session cannot change the model under a store.
``server`` is shared by the whole session (no tokens, small limits); tests that need other
settings or restarts start their own through ``start_server``. Facts to edit and unlearn come
from the default model's corpus, which the model was trained on.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from memory_store.models.builtin import FACTS, Fact, counterfactual_answer, ensure_default_model

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 600.0  # the first run of all builds the default model
JOB_TIMEOUT_S = 300.0
FINISHED = ("succeeded", "failed", "cancelled")

# limits of the shared server, small so that the limit tests send small bodies
TEST_LIMITS = {
    "LOKA_MAX_BODY_BYTES": str(64 * 1024),
    "LOKA_MAX_PROMPT_CHARS": "500",
    "LOKA_MAX_NEW_TOKENS": "64",
    "LOKA_MAX_PARAPHRASES": "4",
    "LOKA_MAX_PIECES_PER_UPDATE": "6",
    "LOKA_MAX_TRAIN_STEPS": "300",
}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LokaServer:
    """One ``python -m service`` process; can be stopped, killed and started again."""

    store_dir: Path
    log_path: Path
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, n: int = 80) -> str:
        """The last ``n`` lines of the server's output (for failure messages)."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "<no log>"

    def start(self) -> None:
        """Launch the process and wait until ``/ready`` answers 200."""
        env = {
            **os.environ,
            **self.env,
            "LOKA_STORE_DIR": str(self.store_dir),
            "LOKA_HOST": "127.0.0.1",
            "LOKA_PORT": str(self.port),
        }
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "service"], cwd=REPO_ROOT, env=env, stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/ready", timeout=2.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        pytest.fail(f"server not ready after {READY_TIMEOUT_S:g} s:\n{self.log_tail()}")

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        """Send ``sig`` (SIGKILL simulates a crash) and wait for the process to end."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout=10)

    def client(self, token: str | None = None) -> httpx.Client:
        """An HTTP client for this server (with a bearer token if given)."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, timeout=120.0, headers=headers)


_SERVERS: list[LokaServer] = []  # every server of the session, for failure reports


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """Attach the tail of each server's log to a failed test's report."""
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for i, server in enumerate(_SERVERS):
            report.sections.append((f"server {i} log ({server.log_path})", server.log_tail(40)))


@pytest.fixture(scope="session")
def default_model() -> Path:
    """The built-in default model (built on first use, then cached)."""
    return ensure_default_model(progress=False)


@pytest.fixture(scope="session")
def start_server(
    tmp_path_factory: pytest.TempPathFactory, default_model: Path
) -> Iterator[Callable[..., LokaServer]]:
    """Start a server with extra ``LOKA_*`` variables; every one is stopped at the end."""
    servers: list[LokaServer] = []

    def start(env: dict[str, str] | None = None, *, started: bool = True) -> LokaServer:
        root = tmp_path_factory.mktemp("loka-serve")
        # the model directory ``Loka.open(model=None)`` would use, pinned for the session
        env = {"LOKA_MODEL": str(default_model), **(env or {})}
        server = LokaServer(root / "store", root / "server.log", env)
        servers.append(server)
        _SERVERS.append(server)
        if started:
            server.start()
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def server(start_server: Callable[..., LokaServer]) -> LokaServer:
    """The shared server: no tokens, the small ``TEST_LIMITS``."""
    return start_server(TEST_LIMITS)


@pytest.fixture(scope="session")
def client(server: LokaServer) -> Iterator[httpx.Client]:
    """An HTTP client of the shared server."""
    with server.client() as c:
        yield c


def wait_job(client: httpx.Client, job_id: str, timeout: float = JOB_TIMEOUT_S) -> dict:
    """Poll ``GET /v1/jobs/{id}`` until the job has finished; its last state."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = client.get(f"/v1/jobs/{job_id}")
        assert r.status_code == 200, r.text
        job = r.json()
        if job["status"] in FINISHED:
            return job
        time.sleep(0.2)
    pytest.fail(f"job {job_id} did not finish within {timeout:g} s")


@pytest.fixture(scope="session")
def wait() -> Callable[..., dict]:
    """``wait(client, job_id)``: the finished job (see ``wait_job``)."""
    return wait_job


@dataclass(frozen=True)
class Facts:
    """Facts of the default model's corpus (which it knows) for the tests to change."""

    edit: Fact  # taught a new answer
    edit_target: str  # " " + the new answer
    unlearn: Fact  # forgotten
    unrelated: Fact  # must not change
    spare: tuple[Fact, ...]  # more facts, for jobs that are not about quality


@pytest.fixture(scope="session")
def known_facts() -> Facts:
    """Facts about different entities and relations, spread over the corpus."""
    picked: list[Fact] = []
    entities: set[str] = set()
    relations: set[str] = set()
    for fact in FACTS[::7]:
        if fact.entity not in entities and fact.relation not in relations:
            picked.append(fact)
            entities.add(fact.entity)
            relations.add(fact.relation)
    edit, unlearn, unrelated, *spare = picked
    return Facts(edit, " " + counterfactual_answer(edit), unlearn, unrelated, tuple(spare))
