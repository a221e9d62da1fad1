"""Fixtures shared by every test folder: the built-in model, real servers made on demand
(``tests/harness.py``) and their logs attached to failed tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import LokaServer

from memory_store.models.builtin import ensure_default_model

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
def make_server(
    tmp_path_factory: pytest.TempPathFactory, default_model: Path
) -> Iterator[Callable[..., LokaServer]]:
    """``make_server(env, store_dir=None, **process)``: a stopped server on a fresh store (the
    built-in model pinned through ``LOKA_MODEL``, so that a rebuild during the session cannot
    change the model under a store); every one is stopped at the end of the session.
    ``process`` (``argv``, ``ready_log``) makes another process of the service: a worker."""
    servers: list[LokaServer] = []

    def make(env: dict[str, str] | None = None, store_dir: Path | None = None,
             **process: Any) -> LokaServer:
        root = tmp_path_factory.mktemp("loka-serve")
        server = LokaServer(store_dir or root / "store", root / "server.log",
                            {"LOKA_MODEL": str(default_model), **(env or {})}, **process)
        servers.append(server)
        _SERVERS.append(server)
        return server

    yield make
    for server in servers:
        server.stop()
