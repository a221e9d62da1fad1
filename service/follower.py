"""Follow the codebook head: a replica switches to a version another process published.

On PostgreSQL the follower ``LISTEN``s on the head channel (a publish notifies in its own
transaction, so the notice arrives once the version is committed) and also polls every
``fallback_s`` (a notice lost with a dropped connection is not waited for); on SQLite it polls
``SELECT version FROM head`` every ``poll_s``. Either way ``Loka.refresh`` loads the new
version off to the side and swaps it in between requests.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from memory_store.codebook.db import HEAD_CHANNEL

if TYPE_CHECKING:
    from memory_store import Loka

logger = logging.getLogger(__name__)


class HeadFollower:
    """A daemon thread that keeps ``engine`` on the store's head."""

    def __init__(self, engine: Loka, poll_s: float = 0.25, fallback_s: float = 1.0) -> None:
        self._engine = engine
        self._poll_s = poll_s
        self._fallback_s = fallback_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="loka-follow", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)

    def _refresh(self) -> None:
        try:
            self._engine.refresh()
        except Exception:  # a bad version must not stop the follower (the old one serves)
            logger.exception("following the head failed; still serving version %d",
                             self._engine.version)

    def _run(self) -> None:
        url = self._engine.store.database_url
        while not self._stop.is_set():
            if url:
                try:
                    self._listen(url)
                except Exception as exc:
                    logger.warning("head follower: %s; polling until it reconnects", exc)
                    self._refresh()
                    self._stop.wait(self._fallback_s)
            else:
                self._refresh()
                self._stop.wait(self._poll_s)

    def _listen(self, url: str) -> None:
        import psycopg

        with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
            conn.execute(f"LISTEN {HEAD_CHANNEL}")
            self._refresh()  # anything published before the LISTEN
            while not self._stop.is_set():
                for _ in conn.notifies(timeout=self._fallback_s, stop_after=1):
                    break
                self._refresh()
