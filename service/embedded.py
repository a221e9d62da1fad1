"""Running the service locally: a free port, waiting for ``/ready``, and the app served by
uvicorn in this process (for benchmarks and tests that read the engine's counters).

Tests that start ``python -m service`` as a real process use ``tests/harness.py``, which
shares ``free_port`` and ``wait_ready`` from here.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import uvicorn

from service.config import Settings
from service.main import create_app
from service.state import ServiceState

READY_TIMEOUT_S = 600.0  # the first start of all builds the built-in model


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, failed: Callable[[], str | None], timeout: float = READY_TIMEOUT_S,
               poll_s: float = 0.1) -> None:
    """Poll ``{url}/ready`` until it answers 200. ``failed()`` returns why the server can no
    longer become ready (it exited, its load failed), or None; RuntimeError then, or after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        reason = failed()
        if reason is not None:
            raise RuntimeError(reason)
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/ready", timeout=2.0).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"not ready after {timeout:g} s")
        time.sleep(poll_s)


@dataclass
class Service:
    """A running in-process service: its base URL and its runtime state."""

    url: str
    state: ServiceState


@contextlib.contextmanager
def running_service(settings: Settings) -> Iterator[Service]:
    """Serve the app with uvicorn in a thread on a free port of 127.0.0.1; wait until
    ``/ready``; stop it afterwards."""
    port = free_port()
    settings = settings.model_copy(update={"host": "127.0.0.1", "port": port})
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, name="embedded-uvicorn", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    state: ServiceState = app.state.service

    def failed() -> str | None:
        if state.load_error is not None:
            return f"the service failed to load: {state.load_error}"
        return None if thread.is_alive() else "the server thread ended"

    try:
        wait_ready(url, failed)
        yield Service(url, state)
    finally:
        server.should_exit = True
        thread.join(60.0)
