"""A real LOKA Serve server for the client tests: ``python -m service`` on a free local port
(``tests/harness.py``), with the built-in default model, a fresh store and both tokens set.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from harness import LokaServer
from loka_client import Client

ADMIN_TOKEN = "test-admin-token"
API_TOKEN = "test-api-token"



@pytest.fixture(scope="package")
def live_server(make_server: Callable[..., LokaServer]) -> Iterator[LokaServer]:
    """A started server with both tokens; stopped after the package's tests."""
    server = make_server({"LOKA_ADMIN_TOKEN": ADMIN_TOKEN, "LOKA_API_TOKEN": API_TOKEN})
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="package")
def client(live_server: LokaServer) -> Iterator[Client]:
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
