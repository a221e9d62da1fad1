"""A LOKA Serve process on 127.0.0.1 for the load and fuzz scripts (never another host).

``LocalServer`` starts ``python -m service`` with a fresh store in a temporary directory (or the
one given), waits for ``/ready``, reports the process's resident memory from ``/proc``, and stops
it. ``loopback_url`` refuses any address that is not this machine's loopback interface.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from service.embedded import free_port, wait_ready

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
READY_TIMEOUT_S = 600.0  # the very first run builds the default model


def loopback_url(url: str) -> str:
    """``url`` without a trailing slash if its host is a loopback address; ValueError if not."""
    host = urlsplit(url).hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"{url}: only a server on this machine's loopback interface may be "
                         "targeted (127.0.0.1, ::1 or localhost)")
    return url.rstrip("/")


def source_version() -> str:
    """The commit of the checkout the server runs from (``+dirty`` with local changes)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=REPO_ROOT, capture_output=True, text=True,
                               timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}+dirty" if dirty else head or "unknown"


def rss_bytes(pid: int) -> int | None:
    """Resident set size of process ``pid`` (``VmRSS`` of ``/proc/<pid>/status``)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


class LocalServer:
    """``python -m service`` on a free loopback port; a context manager that stops it."""

    def __init__(self, env: dict[str, str] | None = None, store_dir: Path | None = None) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="loka-script-")
        root = Path(self._tmp.name)
        self.store_dir = store_dir or root / "store"
        self.log_path = root / "server.log"
        self.port = free_port()
        self.env = dict(env or {})
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> LocalServer:
        """Launch the server and wait until ``/ready`` answers 200."""
        env = {**os.environ, **self.env, "LOKA_STORE_DIR": str(self.store_dir),
               "LOKA_HOST": "127.0.0.1", "LOKA_PORT": str(self.port)}
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "service"], cwd=REPO_ROOT,
                                         env=env, stdout=log, stderr=subprocess.STDOUT)
        proc = self.proc

        def failed() -> str | None:
            code = proc.poll()
            return None if code is None else f"the server exited with {code}"

        try:
            wait_ready(self.url, failed, READY_TIMEOUT_S, poll_s=0.2)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}:\n{self.log_tail()}") from None
        logger.info("server ready at %s (pid %d)", self.url, proc.pid)
        return self

    def log_text(self) -> str:
        """The server's output so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, n: int = 40) -> str:
        """The last ``n`` lines of the server's output."""
        return "\n".join(self.log_text().splitlines()[-n:])

    def stop(self) -> int | None:
        """SIGTERM, then wait; the exit status."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.terminate()
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout=10)

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._tmp.cleanup()
